// Types of slots.js for the TypeScript tests.
export declare function slotCount(): number;
export declare function acquireSlots(count: number, opts?: { timeoutMs?: number }): Promise<() => void>;
export declare function withSlots<T>(count: number, body: () => Promise<T>): Promise<T>;
