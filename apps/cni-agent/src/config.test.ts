import { describe, expect, it } from 'vitest';
import { parseConfig } from './config.js';

describe('parseConfig', () => {
  it('applies defaults: tproxy, DNS capture on, /var/run/istio-cni, :8000', () => {
    const r = parseConfig(['--node-name', 'n1', '--pods-file', '/tmp/p.yaml'], {});
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.command).toBe('run');
    expect(r.config).toMatchObject({
      'node-name': 'n1',
      'run-dir': '/var/run/istio-cni',
      'zds-socket': '/var/run/ztunnel/ztunnel.sock',
      mode: 'tproxy',
      'dns-capture': true,
      ipv6: 'auto',
      'ready-address': { host: '0.0.0.0', port: 8000 },
      'exclude-namespaces': ['kube-system'],
      'drift-interval': 30_000,
      'capture-concurrency': 8,
      'log-format': 'text',
    });
  });

  it('--ipv6 is auto by default and takes auto, true or false (flag or IPV6)', () => {
    const ipv6 = (argv: string[], env: Record<string, string> = {}) => {
      const r = parseConfig(['--node-name', 'n', '--pods-file', 'p.yaml', ...argv], env);
      return r.ok ? r.config.ipv6 : r.errors.join('; ');
    };
    expect(ipv6([])).toBe('auto');
    expect(ipv6(['--ipv6', 'false'])).toBe(false);
    expect(ipv6(['--ipv6=true'])).toBe(true);
    expect(ipv6([], { IPV6: 'false' })).toBe(false);
    expect(ipv6(['--ipv6', 'maybe'])).toMatch(/^--ipv6 \(IPV6\)/);
  });

  it('--dns-capture true|false (flag or DNS_CAPTURE), default true', () => {
    const dns = (argv: string[], env: Record<string, string> = {}) => {
      const r = parseConfig(['--node-name', 'n', '--pods-file', 'p.yaml', ...argv], env);
      return r.ok ? r.config['dns-capture'] : r.errors.join('; ');
    };
    expect(dns([])).toBe(true);
    expect(dns(['--dns-capture', 'false'])).toBe(false);
    expect(dns(['--dns-capture=true'], { DNS_CAPTURE: 'false' })).toBe(true);
    expect(dns([], { DNS_CAPTURE: 'false' })).toBe(false);
  });

  it('--capture-bypass warn|enforce|off (flag or CAPTURE_BYPASS), default warn; --runtime-default-caps containerd|cri-o|list', () => {
    const cfg = (argv: string[], env: Record<string, string> = {}) => {
      const r = parseConfig(['--node-name', 'n', '--pods-file', 'p.yaml', ...argv], env);
      return r.ok ? [r.config['capture-bypass'], r.config['runtime-default-caps']] : r.errors.join('; ');
    };
    expect(cfg([])).toEqual(['warn', 'containerd']);
    expect(cfg(['--capture-bypass', 'enforce'])).toEqual(['enforce', 'containerd']);
    expect(cfg(['--capture-bypass=off'], { CAPTURE_BYPASS: 'enforce' })).toEqual(['off', 'containerd']);
    expect(cfg([], { CAPTURE_BYPASS: 'enforce', RUNTIME_DEFAULT_CAPS: 'cri-o' })).toEqual(['enforce', 'cri-o']);
    expect(cfg(['--runtime-default-caps', 'CHOWN, cap_net_raw,KILL'])).toEqual(['warn', ['CHOWN', 'cap_net_raw', 'KILL']]);
    expect(cfg(['--capture-bypass', 'block'])).toMatch(/^--capture-bypass \(CAPTURE_BYPASS\): Invalid option/);
    expect(cfg(['--runtime-default-caps', 'docker'])).toMatch(/^--runtime-default-caps \(RUNTIME_DEFAULT_CAPS\): containerd, cri-o or a comma-separated capability list, got docker$/);
  });

  it('reads the environment, and flags win over it', () => {
    const env = { NODE_NAME: 'env-node', REDIRECT_MODE: 'redirect', DNS_CAPTURE: 'true', LOG_FORMAT: 'json', READY_ADDRESS: '[::1]:9000', KUBE_API: 'http://127.0.0.1:6443', EXCLUDE_NAMESPACES: 'a, b', DRIFT_INTERVAL: '500ms', CAPTURE_CONCURRENCY: '2' };
    const r = parseConfig(['--node-name', 'flag-node'], env);
    expect(r.ok && r.config).toMatchObject({
      'node-name': 'flag-node',
      mode: 'redirect',
      'dns-capture': true,
      'log-format': 'json',
      'ready-address': { host: '::1', port: 9000 },
      'kube-api': 'http://127.0.0.1:6443',
      'exclude-namespaces': ['a', 'b'],
      'drift-interval': 500,
      'capture-concurrency': 2,
    });
  });

  it('an explicit pod source wins over a KUBECONFIG left in the environment', () => {
    const r = parseConfig(['--node-name', 'n', '--pods-file', 'p.yaml'], { KUBECONFIG: '/root/.kube/config' });
    expect(r.ok && r.config.kubeconfig).toBeUndefined();
  });

  it('reports every bad field on its own line, naming flag and variable', () => {
    const r = parseConfig(['--mode', 'ebpf', '--ready-address', 'nope', '--kube-api', 'http://x:1', '--kubeconfig', 'k', '--install', '--capture-concurrency', '0'], {});
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors).toEqual(
      expect.arrayContaining([
        '--node-name (NODE_NAME): required',
        expect.stringMatching(/^--mode \(REDIRECT_MODE\): Invalid option/),
        expect.stringMatching(/^--ready-address \(READY_ADDRESS\): host:port/),
        expect.stringMatching(/^--pods-file \(PODS_FILE\): choose one pod source, got kubeconfig and kube-api/),
        '--plugin-binary (CNI_PLUGIN_BINARY): required with --install',
        '--capture-concurrency (CAPTURE_CONCURRENCY): a whole number from 1 to 64',
      ]),
    );
    for (const bad of ['eight', '2.5', '65', '0x10']) {
      const r2 = parseConfig(['--node-name', 'n', '--capture-concurrency', bad], {});
      expect(r2.ok ? [] : r2.errors, bad).toEqual(['--capture-concurrency (CAPTURE_CONCURRENCY): a whole number from 1 to 64']);
    }
    expect(parseConfig(['--nope'], {}).ok).toBe(false);
    expect(parseConfig(['frobnicate', '--node-name', 'n'], {})).toEqual({ ok: false, errors: ['unknown command frobnicate'] });
    expect(parseConfig(['uninstall', '--node-name', 'n'], {})).toMatchObject({ ok: true, command: 'uninstall' });
  });

  it('--uninstall-on-exit needs the DaemonSet name and the Kubernetes API (it removes the plugin only on a real uninstall)', () => {
    const errors = (argv: string[], env: Record<string, string> = {}) => {
      const r = parseConfig(['--node-name', 'n', ...argv], env);
      return r.ok ? [] : r.errors;
    };
    expect(errors(['--kube-api', 'http://127.0.0.1:6443', '--uninstall-on-exit'])).toEqual([
      '--uninstall-on-exit (CNI_UNINSTALL_ON_EXIT): needs --daemonset-name (DAEMONSET_NAME) to tell an uninstall from an upgrade',
    ]);
    expect(errors(['--pods-file', 'p.yaml', '--daemonset-name', 'weir-cni-agent'], { CNI_UNINSTALL_ON_EXIT: 'true' })).toEqual([
      '--uninstall-on-exit (CNI_UNINSTALL_ON_EXIT): needs the Kubernetes API (not --pods-file) to tell an uninstall from an upgrade',
    ]);
    expect(errors(['--kube-api', 'http://127.0.0.1:6443', '--daemonset-name', 'weir-cni-agent'], { CNI_UNINSTALL_ON_EXIT: 'true' })).toEqual([]);
    expect(errors(['--pods-file', 'p.yaml'], { CNI_UNINSTALL_ON_EXIT: 'false' })).toEqual([]);
  });
});
