/* global console */
// The benches' goal lines: `goal <what> ≥ <bound>: <value> met`, or `NOT met (short by N%)` /
// `NOT met (over by N%)`, so a missed goal says by how much.

/**
 * Prints one goal line. `what` names the goal; the bound (`≥ min` or `≤ max`, with `unit`) follows it,
 * or, when `what` is a function, goes where it puts it (`(bound) => `${bound} per connection``).
 * `digits`: decimals of the value shown.
 */
export function printGoal(what, value, { min, max, unit = '', digits = 2 }) {
  const atLeast = min !== undefined;
  const limit = atLeast ? min : max;
  const bound = `${atLeast ? '≥' : '≤'} ${limit}${unit ? ` ${unit}` : ''}`;
  const text = typeof what === 'function' ? what(bound) : `${what} ${bound}`;
  const met = atLeast ? value >= limit : value <= limit;
  const miss = atLeast ? `short by ${((1 - value / limit) * 100).toFixed(0)}%` : `over by ${((value / limit - 1) * 100).toFixed(0)}%`;
  console.log(`goal ${text}: ${value.toFixed(digits)} ${met ? 'met' : `NOT met (${miss})`}`);
}
