/**
 * Entry of the single executable. Built with `useSnapshot`: the bundle (zod, the schemas, the CNI
 * logic) is evaluated once at build time and the heap stored in the binary, so an exec starts from
 * there and only runs the command. Run any other way (plain node), it just runs.
 */
import { startupSnapshot } from 'node:v8';
import { runMain } from './cli.js';

if (startupSnapshot.isBuildingSnapshot()) startupSnapshot.setDeserializeMainFunction(runMain);
else runMain();
