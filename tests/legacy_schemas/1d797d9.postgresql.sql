-- The index schema as Base.metadata.create_all made it at commit 1d797d9 (postgresql).

CREATE TABLE users (
	id SERIAL NOT NULL,
	username VARCHAR(64) NOT NULL,
	is_admin BOOLEAN NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (username)
);

CREATE TABLE tokens (
	token_hash VARCHAR(64) NOT NULL,
	user_id INTEGER NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (token_hash),
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);

CREATE INDEX ix_tokens_user_id ON tokens (user_id);

CREATE TABLE orgs (
	id SERIAL NOT NULL,
	slug VARCHAR(64) NOT NULL,
	name VARCHAR(200) NOT NULL,
	owner_id INTEGER NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (slug),
	FOREIGN KEY(owner_id) REFERENCES users (id)
);

CREATE TABLE members (
	org_id INTEGER NOT NULL,
	user_id INTEGER NOT NULL,
	PRIMARY KEY (org_id, user_id),
	FOREIGN KEY(org_id) REFERENCES orgs (id) ON DELETE CASCADE,
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);

CREATE TABLE datasets (
	id SERIAL NOT NULL,
	org_id INTEGER NOT NULL,
	slug VARCHAR(64) NOT NULL,
	visibility VARCHAR(16) NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (org_id, slug),
	FOREIGN KEY(org_id) REFERENCES orgs (id) ON DELETE CASCADE
);

CREATE TABLE entries (
	id SERIAL NOT NULL,
	dataset_id INTEGER NOT NULL,
	path VARCHAR(1024) NOT NULL,
	type VARCHAR(32) NOT NULL,
	size BIGINT NOT NULL,
	hash VARCHAR(64),
	mtime TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	properties JSON NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (dataset_id, path),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE
);

CREATE TABLE entry_builds (
	dataset_id INTEGER NOT NULL,
	path VARCHAR(1024) NOT NULL,
	hash VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	missing VARCHAR(64),
	error TEXT,
	outputs JSON NOT NULL,
	updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	PRIMARY KEY (dataset_id, path),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE
);

CREATE TABLE tasks (
	id VARCHAR(36) NOT NULL,
	dataset_id INTEGER NOT NULL,
	org_id INTEGER NOT NULL,
	user_id INTEGER,
	tool_id VARCHAR(64) NOT NULL,
	version VARCHAR(16) NOT NULL,
	params JSON NOT NULL,
	path VARCHAR(1024),
	request_hash VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	active BOOLEAN NOT NULL,
	attempts INTEGER NOT NULL,
	estimated_output_bytes BIGINT NOT NULL,
	progress_percent INTEGER NOT NULL,
	progress_phase VARCHAR(200),
	log_cursor INTEGER NOT NULL,
	log_evicted INTEGER NOT NULL,
	log_bytes INTEGER NOT NULL,
	error TEXT,
	result JSON,
	created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	started_at TIMESTAMP WITHOUT TIME ZONE,
	finished_at TIMESTAMP WITHOUT TIME ZONE,
	PRIMARY KEY (id),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE
);

CREATE INDEX ix_tasks_dedup ON tasks (dataset_id, request_hash);

CREATE INDEX ix_tasks_state ON tasks (state);

CREATE INDEX ix_tasks_active ON tasks (active);

CREATE INDEX ix_tasks_dataset_created ON tasks (dataset_id, created_at);

CREATE TABLE task_log_lines (
	task_id VARCHAR(36) NOT NULL,
	seq INTEGER NOT NULL,
	line TEXT NOT NULL,
	nbytes INTEGER NOT NULL,
	PRIMARY KEY (task_id, seq),
	FOREIGN KEY(task_id) REFERENCES tasks (id) ON DELETE CASCADE
);

CREATE TABLE artifacts (
	task_id VARCHAR(36) NOT NULL,
	file_name VARCHAR(255) NOT NULL,
	storage_path VARCHAR(2048) NOT NULL,
	size_bytes BIGINT NOT NULL,
	sha256 VARCHAR(64) NOT NULL,
	expires_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
	expired BOOLEAN NOT NULL,
	PRIMARY KEY (task_id),
	FOREIGN KEY(task_id) REFERENCES tasks (id) ON DELETE CASCADE
);
