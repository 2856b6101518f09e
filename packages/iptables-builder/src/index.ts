export type {
  Chain,
  CtState,
  Family,
  FamilyRules,
  Match,
  PortSpec,
  Protocol,
  Rule,
  RuleRef,
  RuleSet,
  Table,
  TableName,
  Target,
} from './model.js';
export { BUILTIN_CHAINS, TABLE_NAMES, isBuiltinChain } from './model.js';
export { buildRule, defineRuleSet } from './validate.js';
export { canonicalAddress, canonicalCidr } from './address.js';
export { CommandFailedError, InvalidRuleError, IptablesError, type IptablesErrorCode } from './errors.js';
export {
  familyRules,
  renderChecks,
  renderIptablesRestore,
  renderRuleSpec,
  ruleArgs,
  type RuleCheck,
} from './render-iptables.js';
export {
  DEFAULT_NFT_TABLE_PREFIX,
  nftChainName,
  nftTableName,
  renderNft,
  type NftRenderOptions,
} from './render-nft.js';
export { parseIptablesSave, type SavedChain, type SavedRule, type SavedTable } from './parse-iptables.js';
export {
  DEFAULT_CHAIN_PREFIX,
  desiredFromFamily,
  diffTables,
  reconcileRestore,
  renderIptablesCleanup,
  type DesiredTable,
  type RuleChange,
  type RuleDiff,
} from './diff.js';
export {
  ISTIO_DEFAULTS,
  hostProbeRules,
  inpodRules,
  ipsetCreateArgs,
  type HostProbeOptions,
  type HostProbeRules,
  type InpodMode,
  type InpodOptions,
  type IpsetSpec,
} from './presets.js';
export {
  Ipv6LoopbackDisabledError,
  RoutingApplier,
  inpodRouting,
  ipv6Interfaces,
  ipRouteArgs,
  ipRuleArgs,
  type FwmarkRule,
  type InpodRoutingOptions,
  type LocalRoute,
  type PolicyRouting,
} from './routing.js';
export { localExecutor, netnsExecutor, type CommandExecutor, type CommandResult } from './executor.js';
export { detectBackend, iptablesCommand, type IptablesBackend } from './backend.js';
export { RuleApplier, type ApplyResult, type RuleApplierOptions } from './applier.js';
export {
  NetnsApplier,
  type NetnsApplierOptions,
  type NetnsApplyOptions,
  type NetnsApplyResult,
  type NetnsFacts,
  type NetnsSpec,
  type NetnsRoundTrip,
} from './netns-applier.js';
export type { NetlinkExchange } from './rtnetlink.js';
export { IpsetNotFoundError, ipsetAdd, ipsetDel, ipsetList, type IpsetEntry } from './ipset-netlink.js';
export { shellQuote, type NetnsSysctls } from './shell-batch.js';
export type { Logger } from './logger.js';
