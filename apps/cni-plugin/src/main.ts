#!/usr/bin/env node
/** weir-cni: the chained CNI plugin binary (see cli.ts). */
import { runMain } from './cli.js';

runMain();
