import { inpodSuite } from './inpod-suite.js';

// The seed's rule set (Istio ≤ 1.23): inbound by mangle TPROXY.
inpodSuite('tproxy');
