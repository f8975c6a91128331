// Proves the Matrix side is real: users registered on the harness's Synapse through the admin
// API talk in a room, and a message sent by one reaches the other's synced client.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { MatrixTestUser } from '../harness/matrix-user.ts';

const users: MatrixTestUser[] = [];
after(() => {
  for (const user of users) user.stop();
});

test('a message sent by one registered user reaches another through the real Synapse', async () => {
  const alice = await MatrixTestUser.create('alice');
  const bob = await MatrixTestUser.create('bob');
  users.push(alice, bob);

  const roomId = await alice.createRoom({ name: 'smoke', invite: [bob.userId] });
  await bob.waitForMembership(roomId, 'invite');
  await bob.joinRoom(roomId);

  const body = `hello bob ${Math.random()}`;
  const eventId = await alice.sendText(roomId, body);
  const received = await bob.waitForRoomEvent({
    roomId,
    filter: (event) => event.getType() === 'm.room.message' && event.getContent()['body'] === body,
    message: "alice's message",
  });
  assert.equal(received.getId(), eventId);
  assert.equal(received.getSender(), alice.userId);
});

test('waitForRoomEvent fails with a message naming what it waited for', async () => {
  const carol = await MatrixTestUser.create('carol');
  users.push(carol);
  const roomId = await carol.createRoom({ name: 'quiet' });
  await assert.rejects(
    carol.waitForRoomEvent({
      roomId,
      filter: () => false,
      timeoutMs: 300,
      message: 'a message nobody sends',
    }),
    /waited 300 ms .* for a message nobody sends/,
  );
});
