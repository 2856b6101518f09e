import { describe, expect, it } from 'vitest';
import { doctorCommand } from './doctor.js';

async function doctor(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await doctorCommand.run(argv, { out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err };
}

describe('weirctl doctor flags', () => {
  it('explains both ways to name the pod', async () => {
    const help = await doctor('--help');
    expect(help.code).toBe(0);
    expect(help.out).toContain('weirctl doctor POD');
    expect(help.out).toContain('weirctl doctor --netns PATH [--ztunnel-netns PATH]');
    expect(help.out).toMatch(/Exit status 0 only when every check passes/);
    expect(help.out).toContain('GET <agent-url>/debug/config');
    expect(help.out).toContain('--dns-capture|--no-dns-capture');
  });

  it('wants exactly one of POD and --netns, and valid addresses', async () => {
    await expect(doctor()).rejects.toThrow('give one POD (sandbox) or --netns PATH (node)');
    await expect(doctor('sleep', '--netns', '/var/run/netns/x')).rejects.toThrow('give one POD');
    await expect(doctor('--netns', '/x', '--probe', 'example.com:80')).rejects.toThrow('--probe: expected IP:PORT, e.g. 10.244.2.2:8000 (got "example.com:80")');
    await expect(doctor('--netns', '/x', '--probe', '999.1.1.1:80')).rejects.toThrow('--probe: expected IP:PORT with an IP address, e.g. 10.244.2.2:8000 (got "999.1.1.1:80")');
    await expect(doctor('--netns', '/x', '--mode', 'ebpf')).rejects.toThrow(/--mode: /);
    await expect(doctor('--netns', '/x', '--ztunnel-admin', 'localhost')).rejects.toThrow('--ztunnel-admin: expected HOST:PORT, e.g. 127.0.0.1:15000 (got "localhost")');
    await expect(doctor('--netns', '/x', '--agent-url', '127.0.0.1:8000')).rejects.toThrow('--agent-url: expected an http:// URL, e.g. http://127.0.0.1:8000 (got "127.0.0.1:8000")');
    await expect(doctor('--netns', '/x', '--iptables-backend', 'ebpf')).rejects.toThrow(/--iptables-backend: /);
    await expect(doctor('--netns', '/x', '--probe-snat-ip', '::1')).rejects.toThrow(/--probe-snat-ip: /);
    await expect(doctor('--netns', '/x', '--dns-capture=yes')).rejects.toThrow('flag --dns-capture takes no value');
    await expect(doctor('--netns', '/x', '--agent', 'http://127.0.0.1:8000')).rejects.toThrow('unknown flag --agent (did you mean --agent-url?)');
  });

  it('says when the netns or the sandbox is not there', async () => {
    expect(await doctor('--netns', '/nonexistent/netns')).toEqual({ code: 1, out: '', err: 'weirctl doctor: /nonexistent/netns is not a network namespace file\n' });
    const none = await doctor('sleep', '--state-dir', `/nonexistent/weirctl-doctor-${process.pid}`);
    expect(none.code).toBe(1);
    expect(none.err).toContain('no sandbox is up');
  });
});
