import { describe, expect, it } from 'vitest';
import { createAdminServer, createMetricsServer, createReadinessServer, parseListenAddress } from './admin.js';
import { ConnectionRecord } from './connection-record.js';
import { createLogger, type LogLevel } from './logger.js';
import { ZtunnelMetrics } from './metrics.js';

const local = { host: '127.0.0.1', port: 0 };

describe('HTTP endpoints', () => {
  it('parses host:port and [v6]:port, rejecting anything else', () => {
    expect(parseListenAddress('127.0.0.1:15000')).toEqual({ host: '127.0.0.1', port: 15000 });
    expect(parseListenAddress('[::]:15020')).toEqual({ host: '::', port: 15020 });
    expect(() => parseListenAddress('15020')).toThrow(/"15020" is not host:port/);
  });

  it('readiness answers 500 with what is pending, then 200', async () => {
    let pending = ['workload snapshot'];
    const server = createReadinessServer(() => pending);
    const { port } = await server.listen(local);
    try {
      let res = await fetch(`http://127.0.0.1:${port}/healthz/ready`);
      expect([res.status, await res.text()]).toEqual([500, 'not ready, pending: workload snapshot\n']);
      pending = [];
      res = await fetch(`http://127.0.0.1:${port}/healthz/ready`);
      expect([res.status, await res.text()]).toEqual([200, 'ready\n']);
      expect((await fetch(`http://127.0.0.1:${port}/nope`)).status).toBe(404);
    } finally {
      await server.close();
    }
  });

  it('admin serves config_dump, changes the log level, and quits on POST', async () => {
    const lines: string[] = [];
    const control = createLogger({ write: (l) => lines.push(l) });
    let quit = 0;
    const server = createAdminServer({
      configDump: () => ({ workloads: [{ name: 'a' }] }),
      logLevel: () => control.level,
      setLogLevel: (l: LogLevel) => control.setLevel(l),
      quit: () => quit++,
    });
    const { port } = await server.listen(local);
    try {
      expect(await (await fetch(`http://127.0.0.1:${port}/config_dump`)).json()).toEqual({ workloads: [{ name: 'a' }] });
      const set = await fetch(`http://127.0.0.1:${port}/logging?level=debug`, { method: 'POST' });
      expect(await set.text()).toBe('current log level is debug\n');
      expect(control.level).toBe('debug');
      const bad = await fetch(`http://127.0.0.1:${port}/logging`, { method: 'POST', body: 'level=loud' });
      expect(bad.status).toBe(400);
      expect((await fetch(`http://127.0.0.1:${port}/quitquitquit`, { method: 'POST' })).status).toBe(200);
      await new Promise((r) => setImmediate(r));
      expect(quit).toBe(1);
    } finally {
      await server.close();
    }
  });
});

describe('ConnectionRecord and metrics', () => {
  it('counts opened/closed/bytes with ztunnel labels and writes one access-log line', async () => {
    const metrics = new ZtunnelMetrics();
    const lines: string[] = [];
    const { logger } = createLogger({ format: 'json', write: (l) => lines.push(l) });
    const info = {
      direction: 'inbound' as const,
      src: { addr: '10.0.0.1:40000', workload: 'a', namespace: 'ns1', identity: 'spiffe://cluster.local/ns/ns1/sa/sa-a' },
      dst: { addr: '10.0.0.2:8080', hboneAddr: '10.0.0.2:15008', workload: 'b', namespace: 'ns2', identity: 'spiffe://cluster.local/ns/ns2/sa/sa-b' },
      mtls: true,
    };
    new ConnectionRecord(info, metrics, logger).complete(100, 42);
    const denied = new ConnectionRecord(info, metrics, logger);
    denied.fail('DENY', 'connection denied by authorization policy');
    denied.fail('DENY', 'twice');
    const text = await metrics.text();
    const labels =
      'reporter="destination",source_workload="a",source_workload_namespace="ns1",source_principal="cluster.local/ns/ns1/sa/sa-a",' +
      'destination_workload="b",destination_workload_namespace="ns2",destination_principal="cluster.local/ns/ns2/sa/sa-b",' +
      'request_protocol="tcp",connection_security_policy="mutual_tls"';
    expect(text).toContain(`istio_tcp_connections_opened_total{${labels},response_flags="-"} 2`);
    expect(text).toContain(`istio_tcp_connections_closed_total{${labels},response_flags="-"} 1`);
    expect(text).toContain(`istio_tcp_connections_closed_total{${labels},response_flags="DENY"} 1`);
    expect(text).toContain(`istio_tcp_connections_failed_total{${labels},response_flags="DENY"} 1`);
    expect(text).toContain(`istio_tcp_sent_bytes_total{${labels},response_flags="-"} 100`);
    expect(text).toContain(`istio_tcp_received_bytes_total{${labels},response_flags="-"} 42`);
    expect(lines).toHaveLength(2);
    const done = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(done).toMatchObject({
      msg: 'connection complete',
      level: 'info',
      'src.addr': '10.0.0.1:40000',
      'src.identity': 'spiffe://cluster.local/ns/ns1/sa/sa-a',
      'dst.hbone_addr': '10.0.0.2:15008',
      'dst.workload': 'b',
      direction: 'inbound',
      bytes_sent: 100,
      bytes_recv: 42,
    });
    expect(String(done.duration)).toMatch(/^\d+ms$/);
    expect(JSON.parse(lines[1]!)).toMatchObject({ msg: 'connection failed', level: 'warn', error: 'connection denied by authorization policy' });
  });

  it('adds counts made between reads once each, and writes no access-log line below the logger level', async () => {
    const metrics = new ZtunnelMetrics();
    const lines: string[] = [];
    const { logger } = createLogger({ level: 'warn', format: 'json', write: (l) => lines.push(l) });
    const info = { direction: 'outbound' as const, src: { addr: '10.0.0.1:40000' }, dst: { addr: '10.0.0.2:8080' }, mtls: false };
    const labels =
      'reporter="source",source_workload="unknown",source_workload_namespace="unknown",source_principal="unknown",' +
      'destination_workload="unknown",destination_workload_namespace="unknown",destination_principal="unknown",' +
      'request_protocol="tcp",connection_security_policy="unknown",response_flags="-"';
    new ConnectionRecord(info, metrics, logger).complete(5, 0);
    expect(await metrics.text()).toContain(`istio_tcp_connections_opened_total{${labels}} 1`);
    expect(await metrics.text()).toContain(`istio_tcp_connections_opened_total{${labels}} 1`);
    new ConnectionRecord(info, metrics, logger).complete(7, 0);
    const text = await metrics.text();
    expect(text).toContain(`istio_tcp_connections_opened_total{${labels}} 2`);
    expect(text).toContain(`istio_tcp_sent_bytes_total{${labels}} 12`);
    // Never any bytes received: no series, as prom-client gives for a counter never incremented.
    expect(text).not.toContain('istio_tcp_received_bytes_total{');
    expect(lines).toEqual([]);
    new ConnectionRecord(info, metrics, logger).fail('CONNECT', 'refused');
    expect(lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual(['connection failed']);
  });

  it('serves the registry over HTTP on /metrics and /stats/prometheus', async () => {
    const metrics = new ZtunnelMetrics();
    metrics.activeProxies.set(3);
    const server = createMetricsServer(metrics);
    const { port } = await server.listen(local);
    try {
      for (const path of ['/metrics', '/stats/prometheus']) {
        expect(await (await fetch(`http://127.0.0.1:${port}${path}`)).text()).toContain('workload_manager_active_proxy_count 3');
      }
    } finally {
      await server.close();
    }
  });
});
