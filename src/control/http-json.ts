// JSON over HTTP for the control socket and the dashboard: one reply writer, the one place a
// ControlError code becomes an HTTP status, and a body reader with a size limit.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CONTROL_ERROR_CODES, ControlError } from './control-error.js';
import { errorText } from './volumes.js';

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

export function sendJsonError(res: ServerResponse, e: unknown, headers: Record<string, string> = {}): void {
  const err = e instanceof ControlError ? e : new ControlError('EIO', errorText(e));
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, CONTROL_ERROR_CODES[err.code], { error: { code: err.code, message: err.message } }, headers);
}

/** Reads a JSON object body of at most bodyBytesMax bytes; an empty body is {}. */
export async function readJsonObject(req: IncomingMessage, bodyBytesMax: number): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    total += c.length;
    if (total > bodyBytesMax) throw new ControlError('EINVAL', `request body above ${bodyBytesMax} bytes`);
    chunks.push(c);
  }
  if (total === 0) return {};
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (e) {
    throw new ControlError('EINVAL', `request body is not JSON: ${errorText(e)}`);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new ControlError('EINVAL', 'request body must be a JSON object');
  }
  return body as Record<string, unknown>;
}
