// Lint rules for clawgate. Typed linting everywhere (floating promises are errors), and an
// override for src/workflows/: workflow code is replayed by Temporal and must be deterministic,
// so it may not touch Node built-ins, I/O, clocks, randomness or timers of its own.
import { builtinModules } from 'node:module';
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

const nodeBuiltins = [...builtinModules.filter((m) => !m.startsWith('_')), 'node:*'];

/** Imports that do I/O or read the clock; workflow code reaches them only through activities. */
const ioPackages = [
  'matrix-js-sdk',
  'matrix-js-sdk/*',
  'pino',
  'jose',
  '@temporalio/client',
  '@temporalio/worker',
  '@temporalio/activity',
  '@temporalio/testing',
];

export default tseslint.config(
  { ignores: ['node_modules/', 'dist/', '.cache/', 'test-output/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: { ...globals.node },
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          // node:test collects these itself; awaiting them would serialise the test file.
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite'] },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/workflows/**/*.ts'],
    languageOptions: { globals: {} },
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          paths: nodeBuiltins
            .filter((m) => !m.includes('*'))
            .map((name) => ({
              name,
              message: 'Workflow code is deterministic: no Node built-ins. Do this in an activity.',
            })),
          patterns: [
            {
              group: ['node:*'],
              message: 'Workflow code is deterministic: no Node built-ins. Do this in an activity.',
            },
            {
              group: ioPackages,
              message: 'Workflow code does no I/O: call an activity (imported as a type) instead.',
            },
            {
              group: ['../activities/*', '../activities', '../ingress/*', '../ingress'],
              allowTypeImports: true,
              message: "Workflows import activities as types only: `import type * as activities from '…'`.",
            },
          ],
        },
      ],
      'no-restricted-globals': [
        'error',
        ...['process', 'require', 'fetch', 'performance', 'setTimeout', 'setInterval', 'setImmediate'].map(
          (name) => ({
            name,
            message: `Workflow code is deterministic: no \`${name}\`. Use @temporalio/workflow (sleep, condition) or an activity.`,
          }),
        ),
        { name: 'crypto', message: 'Workflow code is deterministic: use uuid4() from @temporalio/workflow.' },
        { name: 'Buffer', message: 'Workflow code has no Node built-ins: use Uint8Array and TextEncoder.' },
      ],
      'no-restricted-properties': [
        'error',
        {
          object: 'Date',
          property: 'now',
          message: 'Workflow code reads no clock: use workflowInfo() times or sleep/condition.',
        },
        {
          object: 'Math',
          property: 'random',
          message: 'Workflow code is deterministic: no Math.random.',
        },
      ],
      'no-restricted-syntax': [
        'error',
        {
          selector: "NewExpression[callee.name='Date'][arguments.length=0]",
          message: 'Workflow code reads no clock: `new Date()` without arguments is the current time.',
        },
      ],
    },
  },
  {
    // Tests build malformed documents on purpose; typing every wrong shape would hide the point.
    files: ['test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
);
