-- Who owns each table, in the catalog where a test (and an operator with `\dt+`) reads it:
-- `owner: event store` (written only by command-api's store and relay, never updated),
-- `owner: command-api` (command-side tables written in the same transaction as the events
-- they go with: reservations, credentials, sessions, limits, operational logs) or
-- `owner: projector, <projection>` (read models, rebuildable from the event store at will).
-- The command side decides from aggregates and its own tables, never from read models;
-- query-api reads read models, and a command-side table only where its comment says why
-- (`read by query-api: …`). The test `every_table_names_its_owner_and_no_side_reads_another`
-- holds both rules against the source.

COMMENT ON TABLE events IS 'owner: event store. Append-only (a trigger refuses updates and deletes). read by query-api: histories are shown as they were recorded (audits, payment timelines, webhook histories).';
COMMENT ON TABLE snapshots IS 'owner: event store. Aggregate snapshots, checked by `command-api snapshots verify`.';
COMMENT ON TABLE relay_checkpoints IS 'owner: event store. The relay''s position (transaction id, global position).';
COMMENT ON TABLE quarantined_events IS 'owner: event store. Events the relay could not publish, kept for an operator.';

COMMENT ON TABLE idempotency_keys IS 'owner: command-api. Idempotency-Key claims and the answers they replay.';
COMMENT ON TABLE tenant_slugs IS 'owner: command-api. Slug reservations of the tenant aggregate.';
COMMENT ON TABLE admin_credentials IS 'owner: command-api. Password hashes (never in events).';
COMMENT ON TABLE admin_emails IS 'owner: command-api. E-mail reservations of the admin-user aggregate.';
COMMENT ON TABLE admin_sessions IS 'owner: command-api. Refresh-token families.';
COMMENT ON TABLE admin_roles IS 'owner: command-api. Roles and departments written with their events (the last super admin rule).';
COMMENT ON TABLE admin_credential_changes IS 'owner: command-api. Passwords staged until their event commits.';
COMMENT ON TABLE admin_password_resets IS 'owner: command-api. One-time password reset tokens (hashed).';
COMMENT ON TABLE admin_password_reset_staging IS 'owner: command-api. Password resets staged until their event commits.';
COMMENT ON TABLE phone_users IS 'owner: command-api. Phone numbers of chatbot users (personal data kept out of events, erasable). read by query-api: a WhatsApp contact is linked to the phone user with its number, which no event carries until personal fields are encrypted per subject.';
COMMENT ON TABLE rate_limits IS 'owner: command-api. Fixed-window counters of limits that span aggregates.';
COMMENT ON TABLE outbound_messages IS 'owner: command-api. The capture sink of outbound messages when no provider is configured. read by query-api: the dev inbox shows the capture sink, as a provider''s mailbox would.';
COMMENT ON TABLE webhook_rejections IS 'owner: command-api. Refused webhooks (nothing was accepted, so no event): shapes, digests, sealed requests for a replay. read by query-api: operators list the refusals.';
COMMENT ON TABLE access_changes IS 'owner: event store. Written by triggers in the transaction of each identity or tenant event. read by query-api: every process checks tokens against it.';

COMMENT ON TABLE projection_checkpoints IS 'owner: projector. Each projection''s position per aggregate, written with its read model.';
COMMENT ON TABLE dead_letters IS 'owner: projector. Messages a projection gave up on.';
COMMENT ON TABLE tenants IS 'owner: projector, tenants.';
COMMENT ON TABLE admin_users IS 'owner: projector, admin_users.';
COMMENT ON TABLE admin_logins IS 'owner: projector, admin_users.';
COMMENT ON TABLE chat_threads IS 'owner: projector, chat.';
COMMENT ON TABLE chat_participants IS 'owner: projector, chat.';
COMMENT ON TABLE chat_messages IS 'owner: projector, chat.';
COMMENT ON TABLE chat_reads IS 'owner: projector, chat.';
COMMENT ON TABLE chat_scheduled IS 'owner: projector, chat.';
COMMENT ON TABLE webhooks IS 'owner: projector, webhooks.';
COMMENT ON TABLE catalog_taxes IS 'owner: projector, catalog.';
COMMENT ON TABLE catalog_products IS 'owner: projector, catalog.';
COMMENT ON TABLE payments IS 'owner: projector, payments.';
COMMENT ON TABLE payment_lines IS 'owner: projector, payments.';
COMMENT ON TABLE payment_refunds IS 'owner: projector, payments.';
COMMENT ON TABLE payment_charges IS 'owner: projector, payments.';
COMMENT ON TABLE audio_files IS 'owner: projector, audio.';
COMMENT ON TABLE whatsapp_sessions IS 'owner: projector, whatsapp-sessions.';
COMMENT ON TABLE whatsapp_conversations IS 'owner: projector, whatsapp.';
COMMENT ON TABLE whatsapp_messages IS 'owner: projector, whatsapp.';
COMMENT ON TABLE whatsapp_contacts IS 'owner: projector, whatsapp.';
COMMENT ON TABLE calls IS 'owner: projector, calls.';
COMMENT ON TABLE realtime_thread_customers IS 'owner: projector, realtime.';
COMMENT ON TABLE reassignment_threads IS 'owner: projector, reassignment.';
