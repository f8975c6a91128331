// The workflows a clawgate worker runs. Deterministic code only (see eslint.config.js): no
// Node built-ins, no I/O, no clocks; activities are imported as types.
export { jobWorkflow } from './job.ts';
export { scheduledJobWorkflow } from './scheduled.ts';
export { controlWorkflow } from './control.ts';
