// Test support for the xDS and CA clients: the test control plane (src/xds/test-control-plane.ts,
// a Delta ADS + Istio CA server on grpc-js) and small helpers. The sandbox can start the same
// control plane: `await TestControlPlane.start({ port, token })`, then point ztunnel at
// `https://<cp.address>` with `cp.rootCaPem` as XDS_ROOT_CA/CA_ROOT_CA and `cp.token` in the token file.
import type { Logger } from '../src/logger.js';

export { TestControlPlane, ipBytes } from '../src/xds/test-control-plane.js';
export type { IssuedCertificate, RecordedRequest, TestControlPlaneOptions } from '../src/xds/test-control-plane.js';

/**
 * Polls `cond` until it returns a truthy value or `timeoutMs` passes (then throws, naming `what`).
 * The default is generous: on a loaded CI machine an in-process gRPC round trip can take seconds;
 * a test that means "promptly" asserts its own bound.
 */
export async function waitFor<T>(what: string, cond: () => T | undefined | false | null | Promise<T | undefined | false | null>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // Awaited: an async condition's promise is truthy, it would pass at once.
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export interface LogLine {
  level: string;
  msg: string;
  obj: Record<string, unknown>;
}

/** A logger that keeps every line, for asserting what an operator would read. */
export function recordingLogger(lines: LogLine[] = [], bindings: Record<string, unknown> = {}): Logger & { lines: LogLine[] } {
  const at =
    (level: string) =>
    (obj: object, msg?: string): void => {
      lines.push({ level, msg: msg ?? '', obj: { ...bindings, ...(obj as Record<string, unknown>) } });
    };
  return {
    lines,
    trace: at('trace'),
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (b) => recordingLogger(lines, { ...bindings, ...b }),
  };
}
