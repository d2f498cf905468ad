-- Departments are part of the tenant (admin users are placed in them); the read model lists
-- them, sorted.
ALTER TABLE tenants ADD COLUMN departments jsonb NOT NULL DEFAULT '[]';
