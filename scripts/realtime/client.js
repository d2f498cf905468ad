// A real pusher-js client for the end-to-end tests, driven by one JSON argument:
//   node client.js '{"host", "port", "key", "authEndpoint", "userAuthEndpoint"?, "token",
//                    "channels": [...], "trigger": {"channel", "event", "data", "times"?}?}'
// With "userAuthEndpoint" it signs in first (as the frontend must: connections that do not
// are closed). It subscribes to every channel through the authorizer and prints one JSON
// line per happening: {"type": "connected"}, {"type": "signed_in", "user"},
// {"type": "state", "current"} (after connected), {"type": "subscribed", "channel", "members"?},
// {"type": "subscription_error", "channel", "status"}, {"type": "event", "channel", "name",
// "data"}, {"type": "error", "code"} (an error the server sent). Events delivered to the
// signed-in user (pusher.user.bind) print as {"type": "event", "channel": "#user", ...}.
// With "trigger", once every channel is subscribed it sends that client event ("times"
// times, default once).
const Pusher = require('pusher-js');

const config = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

const pusher = new Pusher(config.key, {
  wsHost: config.host,
  wsPort: config.port,
  wssPort: config.port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  cluster: 'mt1',
  channelAuthorization: {
    endpoint: config.authEndpoint,
    transport: 'ajax',
    headers: { Authorization: `Bearer ${config.token}` },
  },
  userAuthentication: {
    endpoint: config.userAuthEndpoint || config.authEndpoint,
    transport: 'ajax',
    headers: { Authorization: `Bearer ${config.token}` },
  },
});

pusher.connection.bind('connected', () => print({ type: 'connected' }));
pusher.connection.bind('state_change', ({ previous, current }) => {
  if (previous === 'connected') print({ type: 'state', current });
});
pusher.connection.bind('message', (event) => {
  if (event.event === 'pusher:error' && event.data) {
    print({ type: 'error', code: event.data.code });
  }
  if (event.event === 'pusher:signin_success') {
    print({ type: 'signed_in', user: JSON.parse(event.data.user_data).id });
  }
});
if (config.userAuthEndpoint) pusher.signin();
pusher.user.bind_global((event, data) => {
  print({ type: 'event', channel: '#user', name: event, data });
});
let pending = config.channels.length;
for (const name of config.channels) {
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', (members) => {
    const line = { type: 'subscribed', channel: name };
    if (members && members.each) {
      line.members = [];
      members.each((m) => line.members.push(m.id));
    }
    print(line);
    pending -= 1;
    if (pending === 0 && config.trigger) {
      const target = pusher.channel(config.trigger.channel);
      for (let i = 0; i < (config.trigger.times || 1); i += 1) {
        target.trigger(config.trigger.event, config.trigger.data);
      }
      print({ type: 'triggered', channel: config.trigger.channel, name: config.trigger.event });
    }
  });
  channel.bind('pusher:subscription_error', (error) => {
    print({ type: 'subscription_error', channel: name, status: error && error.status });
  });
  channel.bind_global((event, data) => {
    if (!event.startsWith('pusher:') && !event.startsWith('pusher_internal:')) {
      print({ type: 'event', channel: name, name: event, data });
    }
  });
}
