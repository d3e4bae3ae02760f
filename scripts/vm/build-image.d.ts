// Types of build-image.js for the TypeScript tests.
export interface ImageManifest {
  name: string;
  dir: string;
  vmlinux: string;
  initrd: string;
  kernelVersion: string;
  kernelPackage: string;
  memMiB: number;
  packages: Record<string, string>;
}
export declare function cacheDir(): string;
export declare function ensureHostTools(extra?: Record<string, string>): void;
export declare function ensureImage(name: string): ImageManifest;
export declare function stripModuleSignature(ko: Buffer): Buffer;
