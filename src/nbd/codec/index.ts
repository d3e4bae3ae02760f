// The NBD codec: wire constants and pure encode/decode functions shared by server and client.
export * from './constants.js';
export * from './errors.js';
export * from './request.js';
export * from './reply.js';
export * from './option.js';
