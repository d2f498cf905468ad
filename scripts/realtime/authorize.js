// The Pusher server library's own signatures, to check ours against:
//   node authorize.js <app_id> <key> <secret> <socket_id> <channel> [<presence data JSON>]
// prints what the library answers for a channel (`{"auth": …, "channel_data"?: …}`);
//   node authorize.js --user <app_id> <key> <secret> <socket_id> <user data JSON>
// prints what it answers for a user signing in (`{"auth": …, "user_data": …}`).
const Pusher = require('pusher');

const args = process.argv.slice(2);
const user = args[0] === '--user';
const [appId, key, secret, socketId, target, presence] = user ? args.slice(1) : args;
const pusher = new Pusher({ appId, key, secret, cluster: 'mt1' });
let answer;
if (user) {
  answer = pusher.authenticateUser(socketId, JSON.parse(target));
} else if (presence) {
  answer = pusher.authorizeChannel(socketId, target, JSON.parse(presence));
} else {
  answer = pusher.authorizeChannel(socketId, target);
}
process.stdout.write(JSON.stringify(answer));
