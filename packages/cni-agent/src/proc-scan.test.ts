import { describe, expect, it } from 'vitest';
import { canonicalIp, cgroupHasPodUid, ipv6FromIfInet6, localIpv4FromFibTrie } from './proc-scan.js';

describe('proc scan parsing', () => {
  it('matches pod UIDs in cgroupfs and systemd spellings', () => {
    const uid = '1e054806-e667-4109-a5af-08b3e6ba0c42';
    expect(cgroupHasPodUid(`0::/kubepods/besteffort/pod${uid}/abc\n`, uid)).toBe(true);
    expect(cgroupHasPodUid(`0::/kubepods.slice/kubepods-pod${uid.replace(/-/g, '_')}.slice/x\n`, uid)).toBe(true);
    expect(cgroupHasPodUid('0::/system.slice/containerd.service\n', uid)).toBe(false);
  });

  it('reads local IPv4 addresses from fib_trie', () => {
    const text = `Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.1.0/24 2 0 2
        |-- 10.244.1.0
           /24 link UNICAST
        |-- 10.244.1.5
           /32 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
        |-- 10.244.1.5
           /32 host LOCAL
`;
    expect([...localIpv4FromFibTrie(text)].sort()).toEqual(['10.244.1.5', '127.0.0.1']);
  });

  it('reads IPv6 addresses from if_inet6 in canonical form', () => {
    const text = `00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000005 02 40 00 80     eth0
`;
    expect([...ipv6FromIfInet6(text)]).toEqual(['::1', 'fd00::5']);
    expect(canonicalIp('FD00:0:0::5')).toBe('fd00::5');
    expect(canonicalIp('10.0.0.1')).toBe('10.0.0.1');
  });
});
