// The failure converter of every Temporal client, worker and workflow bundle of clawgate: the
// SDK's own, with `encodeCommonAttributes`, so a failure's message and stack trace (an
// activity's error, a workflow's) travel in a payload of the failure (`encodedAttributes`),
// which the payload codec encrypts (src/temporal/codec.ts), and the failure itself says only
// "Encoded failure". A failure recorded in clear, before this converter, still reads: the
// SDK's converter takes a failure's own message and stack when it has no encoded ones.
//
// Workflow code loads it too (the bundle is made with its path): no Node.js built-ins here.
import { DefaultFailureConverter } from '@temporalio/common';

export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
