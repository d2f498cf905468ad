// The Pusher server library's own channel authorization, to check ours against:
//   node authorize.js <app_id> <key> <secret> <socket_id> <channel> [<presence data JSON>]
// prints what the library answers (`{"auth": …, "channel_data"?: …}`).
const Pusher = require('pusher');

const [appId, key, secret, socketId, channel, presence] = process.argv.slice(2);
const pusher = new Pusher({ appId, key, secret, cluster: 'mt1' });
const answer = presence
  ? pusher.authorizeChannel(socketId, channel, JSON.parse(presence))
  : pusher.authorizeChannel(socketId, channel);
process.stdout.write(JSON.stringify(answer));
