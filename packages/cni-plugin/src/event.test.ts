import { describe, expect, it } from 'vitest';
import { cmdAddEventSchema, ipConfigAddress, ipConfigsFromResult } from './event.js';

describe('cmdadd event', () => {
  it('builds IPs exactly as istio-cni marshals them (mask as base64 bytes)', () => {
    const ips = ipConfigsFromResult({
      cniVersion: '1.0.0',
      ips: [
        { address: '10.244.1.5/24', gateway: '10.244.1.1', interface: 0 },
        { address: 'fd00::5/64' },
      ],
    });
    expect(ips).toEqual([
      { Interface: 0, Address: { IP: '10.244.1.5', Mask: '////AA==' }, Gateway: '10.244.1.1' },
      { Interface: null, Address: { IP: 'fd00::5', Mask: '//////////8AAAAAAAAAAA==' }, Gateway: '' },
    ]);
    expect(ipConfigsFromResult(undefined)).toBeNull();
    expect(ipConfigAddress(ips![0]!)).toEqual({ ip: '10.244.1.5', prefixLength: 24 });
    expect(ipConfigAddress(ips![1]!)).toEqual({ ip: 'fd00::5', prefixLength: 64 });
  });

  it('parses the FACTS body and rejects malformed ones naming the field', () => {
    const body = {
      Netns: '/var/run/netns/cni-1234',
      PodName: 'web-0',
      PodNamespace: 'default',
      IPs: [{ Interface: 0, Address: { IP: '10.244.1.5', Mask: '////AA==' }, Gateway: '10.244.1.1' }],
    };
    expect(cmdAddEventSchema.parse(body)).toEqual(body);
    expect(cmdAddEventSchema.parse({ ...body, IPs: null }).IPs).toEqual([]);
    const bad = cmdAddEventSchema.safeParse({ ...body, IPs: [{ Address: { IP: '10.1', Mask: '////AA==' } }] });
    expect(bad.success).toBe(false);
    expect(bad.error?.issues[0]?.path).toEqual(['IPs', 0, 'Address', 'IP']);
    expect(cmdAddEventSchema.safeParse({ ...body, PodName: '' }).success).toBe(false);
    // PodUID (K8S_POD_UID) is optional: istio-cni's body has none.
    const withUid = { ...body, PodUID: '4f1c2a9e-0d4b-4c7e-9a51-2b8d6e3f7a10' };
    expect(cmdAddEventSchema.parse(withUid)).toEqual(withUid);
    expect(cmdAddEventSchema.parse(body)).not.toHaveProperty('PodUID');
    expect(cmdAddEventSchema.safeParse({ ...body, PodUID: '' }).success).toBe(false);
    expect(cmdAddEventSchema.safeParse({ ...body, PodUID: 7 }).success).toBe(false);
  });
});
