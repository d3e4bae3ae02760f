// Minimal types for the parts of buffer-layout (CommonJS, untyped) the disk log header uses.
declare module 'buffer-layout' {
  export interface Layout<T = unknown> {
    readonly span: number;
    readonly property?: string;
    decode(b: Uint8Array, offset?: number): T;
    encode(src: T, b: Uint8Array, offset?: number): number;
    /** The same layout under another property name. */
    replicate(property: string): Layout<T>;
  }
  export function u32(property?: string): Layout<number>;
  export function nu64(property?: string): Layout<number>;
  export function blob(length: number, property?: string): Layout<Buffer>;
  export function seq<T>(elementLayout: Layout<T>, count: number, property?: string): Layout<T[]>;
  export function struct<T>(fields: Layout<unknown>[], property?: string): Layout<T>;
  const _default: {
    u32: typeof u32;
    nu64: typeof nu64;
    blob: typeof blob;
    seq: typeof seq;
    struct: typeof struct;
  };
  export default _default;
}
