import { inpodSuite } from './inpod-suite.js';

// Istio ≥ 1.24's rule set: inbound by nat REDIRECT (original destination from SO_ORIGINAL_DST).
inpodSuite('redirect');
