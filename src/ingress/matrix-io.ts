// Matrix I/O activities, hosted by the gateway on its own task queue (only the process that
// holds the Matrix device can encrypt to an encrypted room). Every message about a job goes in
// the thread rooted at its request. Retries never post twice: the transaction id is derived
// from the workflow and the step, and the homeserver answers a repeated transaction id with
// the event it already made.
import { ApplicationFailure } from '@temporalio/common';
import { EventStatus, MatrixEventEvent, type MatrixClient, type MatrixEvent, type Room } from 'matrix-js-sdk';
import type { ApprovalVerdict, PostedMessage } from '../temporal/job-types.ts';

/**
 * The relation of a message in the thread rooted at `root`, replying to `replyTo` (the root by
 * default), with the reply fallback that clients without threads show.
 */
export function threadRelation(root: string, replyTo: string = root): Record<string, unknown> {
  return {
    rel_type: 'm.thread',
    event_id: root,
    is_falling_back: true,
    'm.in_reply_to': { event_id: replyTo },
  };
}

/**
 * Nothing is posted in clear in an encrypted room: matrix-js-sdk sends unencrypted when it does
 * not know the room, or has no crypto, so both are checked first.
 */
async function refuseClearTextInEncryptedRoom(
  client: MatrixClient,
  roomId: string,
  type: string,
): Promise<void> {
  if (type === 'm.reaction') return; // reactions are never encrypted (their relation is public anyway)
  const room = client.getRoom(roomId);
  let encrypted = room?.hasEncryptionStateEvent() ?? false;
  if (!room) {
    try {
      await client.getStateEvent(roomId, 'm.room.encryption', '');
      encrypted = true;
    } catch (error) {
      if ((error as { errcode?: string }).errcode !== 'M_NOT_FOUND') throw error;
    }
  }
  if (!encrypted) return;
  if (!client.getCrypto()) {
    throw ApplicationFailure.nonRetryable(
      `room ${roomId} is encrypted and this gateway account has no working encryption; nothing is posted in clear`,
      'ENCRYPTION_UNAVAILABLE',
    );
  }
  if (!room) throw new Error(`room ${roomId} is encrypted and not loaded yet; retrying`);
}

/**
 * Carries on the message an earlier attempt started under the same transaction id, instead of
 * sending it anew: matrix-js-sdk keeps the local echo of a message it could not send (the
 * homeserver was away) under its transaction id and refuses a second message with it
 * ("addPendingEvent called on an event with known txnId"), so without this a message that failed
 * once would fail on every retry. One still being sent is waited for; one that was not sent is
 * sent again, with the same transaction id (the homeserver makes it once). Returns its event id.
 */
async function carryOn(client: MatrixClient, room: Room, earlier: MatrixEvent): Promise<string> {
  for (;;) {
    const status = earlier.status;
    if (status === EventStatus.SENT || status === null) return earlier.getId() as string;
    if (status === EventStatus.NOT_SENT) return (await client.resendEvent(earlier, room)).event_id;
    if (status === EventStatus.CANCELLED) {
      throw new Error(`the message with transaction id ${earlier.getTxnId() ?? '?'} was cancelled locally`);
    }
    await new Promise((resolve) => earlier.once(MatrixEventEvent.Status, resolve));
  }
}

export function createMatrixActivities(
  client: MatrixClient,
  opts: {
    /** A job's verdict on an approval, told once its reaction is posted (the gateway's metric). */
    onVerdict?: (verdict: ApprovalVerdict) => void;
  } = {},
) {
  /** Posts a message; `again` when an earlier attempt of this activity had posted it already. */
  async function send(
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    txnKey: string,
  ): Promise<PostedMessage & { again: boolean }> {
    await refuseClearTextInEncryptedRoom(client, roomId, type);
    // Transaction ids are opaque to the server; a hash keeps them short and free of odd characters.
    const txnId = Buffer.from(txnKey).toString('base64url').slice(0, 200);
    const room = client.getRoom(roomId);
    const earlier = room?.getEventForTxnId(txnId);
    const again = earlier !== undefined && (earlier.status === EventStatus.SENT || earlier.status === null);
    const eventId =
      room && earlier
        ? await carryOn(client, room, earlier)
        : (await client.sendEvent(roomId, type as never, content as never, txnId)).event_id;
    const event = await client.fetchRoomEvent(roomId, eventId);
    return { eventId, originServerTs: Number(event.origin_server_ts ?? 0), again };
  }

  /** What an activity answers: the posted message without `again`, as the job's history had it before. */
  const posted = async (sending: Promise<PostedMessage & { again: boolean }>): Promise<PostedMessage> => {
    const { eventId, originServerTs } = await sending;
    return { eventId, originServerTs };
  };

  return {
    /** Posts a notice in the job's thread. `txnKey` is unique per workflow and message. */
    postToThread(input: {
      roomId: string;
      threadRoot: string;
      body: string;
      /** The same text as HTML (`formatted_body`), for clients that show formatting. */
      html?: string;
      /** More content fields of clawgate's own (an approval card names its card and job). */
      fields?: Record<string, unknown>;
      txnKey: string;
    }): Promise<PostedMessage> {
      return posted(
        send(
          input.roomId,
          'm.room.message',
          {
            ...input.fields,
            msgtype: 'm.notice',
            body: input.body,
            ...formatted(input.html),
            'm.relates_to': threadRelation(input.threadRoot),
          },
          input.txnKey,
        ),
      );
    },

    /**
     * Posts a message at the room's top level, not in a thread: the root a scheduled job's thread
     * hangs from, since such a job has no request message of a person's. `txnKey` is unique per
     * workflow and message.
     */
    postToRoom(input: {
      roomId: string;
      body: string;
      fields?: Record<string, unknown>;
      txnKey: string;
    }): Promise<PostedMessage> {
      return posted(
        send(
          input.roomId,
          'm.room.message',
          { ...input.fields, msgtype: 'm.notice', body: input.body },
          input.txnKey,
        ),
      );
    },

    /**
     * Replaces the text of a message the bot posted (the plan's status line), as an edit
     * (`m.replace`): clients show the new text in place, and the history keeps every version.
     */
    editMessage(input: {
      roomId: string;
      eventId: string;
      body: string;
      html?: string;
      txnKey: string;
    }): Promise<PostedMessage> {
      return posted(
        send(
          input.roomId,
          'm.room.message',
          {
            msgtype: 'm.notice',
            body: `* ${input.body}`,
            ...formatted(input.html === undefined ? undefined : `* ${input.html}`),
            'm.new_content': { msgtype: 'm.notice', body: input.body, ...formatted(input.html) },
            'm.relates_to': { rel_type: 'm.replace', event_id: input.eventId },
          },
          input.txnKey,
        ),
      );
    },

    /**
     * Reacts to an event (an approval accepted or refused). `verdict` is the job's decision on
     * that approval, for the gateway's approval metric: counted once the reaction is posted,
     * and not again when a retry finds it posted already.
     */
    async react(input: {
      roomId: string;
      eventId: string;
      key: string;
      txnKey: string;
      verdict?: ApprovalVerdict;
    }): Promise<PostedMessage> {
      const reaction = await send(
        input.roomId,
        'm.reaction',
        { 'm.relates_to': { rel_type: 'm.annotation', event_id: input.eventId, key: input.key } },
        input.txnKey,
      );
      if (input.verdict && !reaction.again) opts.onVerdict?.(input.verdict);
      return { eventId: reaction.eventId, originServerTs: reaction.originServerTs };
    },
  };
}

/** The formatted-body fields of a message, when it has HTML. */
function formatted(html: string | undefined): Record<string, string> {
  return html === undefined ? {} : { format: 'org.matrix.custom.html', formatted_body: html };
}

export type MatrixActivities = ReturnType<typeof createMatrixActivities>;
