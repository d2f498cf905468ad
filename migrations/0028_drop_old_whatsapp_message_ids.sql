-- no-transaction
-- Replaced by events_whatsapp_message_ids_2 (migration 0027).
DROP INDEX CONCURRENTLY IF EXISTS events_whatsapp_message_ids;
