// Job, stage and run statuses (the API's names, OpenAI's for jobs).

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function isTerminal(status) {
  return TERMINAL.has(status);
}
