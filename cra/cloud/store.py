"""The cloud's state in one sqlite file: everything a restart must not forget.

Live tunnels and their connection keys are not here: like the platform's, they end with the
process. Every method takes the tenant, so no query can reach across tenants.
"""
import json
import secrets
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ids (id INTEGER PRIMARY KEY AUTOINCREMENT);
CREATE TABLE IF NOT EXISTS users (
    tenant TEXT NOT NULL, name TEXT NOT NULL, password_hash TEXT NOT NULL,
    roles TEXT NOT NULL, is_device INTEGER NOT NULL, PRIMARY KEY (tenant, name));
CREATE TABLE IF NOT EXISTS bootstrap_users (
    tenant TEXT PRIMARY KEY, name TEXT NOT NULL, password_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS managed_objects (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, owner TEXT NOT NULL,
    creation_time TEXT NOT NULL, last_updated TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS external_ids (
    tenant TEXT NOT NULL, type TEXT NOT NULL, value TEXT NOT NULL, mo_id INTEGER NOT NULL,
    PRIMARY KEY (tenant, type, value));
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, device_id INTEGER NOT NULL,
    status TEXT NOT NULL, creation_time TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configurations (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, device_id INTEGER NOT NULL,
    body TEXT NOT NULL, sealed_secrets TEXT);
CREATE TABLE IF NOT EXISTS options (
    tenant TEXT NOT NULL, category TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (tenant, category, key));
CREATE TABLE IF NOT EXISTS device_requests (
    tenant TEXT NOT NULL, id TEXT NOT NULL, status TEXT NOT NULL, creation_time TEXT NOT NULL,
    PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, source_id INTEGER NOT NULL, type TEXT NOT NULL,
    time TEXT NOT NULL, moment INTEGER NOT NULL, creation_time TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_source ON events (tenant, source_id, moment);
"""

# Ids start where the platform's documentation examples do (device 10200), and look like real ones.
FIRST_ID = """INSERT INTO sqlite_sequence (name, seq) SELECT 'ids', 10199
              WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'ids')"""


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    def __init__(self, path):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        self._db.execute(FIRST_ID)

    def close(self):
        self._db.close()

    @contextmanager
    def transaction(self):
        """Writes that must land together; the event loop is the only writer, so no nesting."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _one(self, sql, *args):
        return self._db.execute(sql, args).fetchone()

    def _all(self, sql, *args):
        return self._db.execute(sql, args).fetchall()

    def _run(self, sql, *args):
        return self._db.execute(sql, args)

    def _new_id(self):
        """Ids are unique across objects, operations and configurations, as the platform's are."""
        return self._run("INSERT INTO ids DEFAULT VALUES").lastrowid

    def secret(self, name, size=32):
        """A random value made once and kept, e.g. the key that signs tokens."""
        row = self._one("SELECT value FROM meta WHERE key = ?", name)
        if row:
            return bytes.fromhex(row["value"])
        value = secrets.token_bytes(size)
        self._run("INSERT INTO meta (key, value) VALUES (?, ?)", name, value.hex())
        return value

    # users

    def put_user(self, tenant, name, password_hash, roles=(), is_device=False):
        self._run(
            "INSERT INTO users (tenant, name, password_hash, roles, is_device) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, name) DO UPDATE SET password_hash = excluded.password_hash, "
            "roles = excluded.roles, is_device = excluded.is_device",
            tenant, name, password_hash, json.dumps(sorted(roles)), int(is_device))

    def user(self, tenant, name):
        row = self._one("SELECT * FROM users WHERE tenant = ? AND name = ?", tenant, name)
        if row is None:
            return None
        return {"tenant": tenant, "name": name, "password_hash": row["password_hash"],
                "roles": frozenset(json.loads(row["roles"])), "is_device": bool(row["is_device"])}

    def tenants(self):
        return sorted({r["tenant"] for r in self._all("SELECT tenant FROM users UNION SELECT tenant FROM bootstrap_users")})

    def put_bootstrap_user(self, tenant, name, password_hash):
        self._run("INSERT INTO bootstrap_users (tenant, name, password_hash) VALUES (?, ?, ?) "
                  "ON CONFLICT (tenant) DO UPDATE SET name = excluded.name, password_hash = excluded.password_hash",
                  tenant, name, password_hash)

    def bootstrap_users(self, name):
        return [dict(r) for r in self._all("SELECT * FROM bootstrap_users WHERE name = ?", name)]

    # identity

    def external_id(self, tenant, type_, value):
        row = self._one("SELECT mo_id FROM external_ids WHERE tenant = ? AND type = ? AND value = ?", tenant, type_, value)
        return row["mo_id"] if row else None

    def add_external_id(self, tenant, type_, value, mo_id):
        """False when the external id is taken already."""
        cursor = self._run("INSERT OR IGNORE INTO external_ids (tenant, type, value, mo_id) VALUES (?, ?, ?, ?)",
                           tenant, type_, value, mo_id)
        return cursor.rowcount == 1

    def external_ids_of(self, tenant, mo_id):
        return [(r["type"], r["value"]) for r in
                self._all("SELECT type, value FROM external_ids WHERE tenant = ? AND mo_id = ? ORDER BY type, value", tenant, mo_id)]

    # inventory

    def create_managed_object(self, tenant, owner, fragments):
        mo_id, stamp = self._new_id(), now()
        self._run("INSERT INTO managed_objects (id, tenant, owner, creation_time, last_updated, body) VALUES (?, ?, ?, ?, ?, ?)",
                  mo_id, tenant, owner, stamp, stamp, json.dumps(fragments))
        return self.managed_object(tenant, mo_id)

    def managed_object(self, tenant, mo_id):
        row = self._one("SELECT * FROM managed_objects WHERE tenant = ? AND id = ?", tenant, mo_id)
        return _managed_object(row) if row else None

    def managed_objects(self, tenant, owner=None, offset=0, limit=None):
        sql, args = "SELECT * FROM managed_objects WHERE tenant = ?", [tenant]
        if owner is not None:
            sql, args = sql + " AND owner = ?", args + [owner]
        rows = self._all(sql + " ORDER BY id LIMIT ? OFFSET ?", *args, -1 if limit is None else limit, offset)
        return [_managed_object(r) for r in rows]

    def update_managed_object(self, tenant, mo_id, fragments):
        """PUT semantics of the platform: given fragments replace, a null removes, the rest stays."""
        current = self.managed_object(tenant, mo_id)
        body = {k: v for k, v in current.items() if k not in MANAGED_OBJECT_META}
        for key, value in fragments.items():
            if key in MANAGED_OBJECT_META:
                continue
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        self._run("UPDATE managed_objects SET body = ?, last_updated = ? WHERE tenant = ? AND id = ?",
                  json.dumps(body), now(), tenant, mo_id)
        return self.managed_object(tenant, mo_id)

    def delete_managed_object(self, tenant, mo_id):
        for table, column in (("managed_objects", "id"), ("external_ids", "mo_id"),
                              ("operations", "device_id"), ("configurations", "device_id"), ("events", "source_id")):
            self._run(f"DELETE FROM {table} WHERE tenant = ? AND {column} = ?", tenant, mo_id)

    # operations

    def create_operation(self, tenant, device_id, fragments):
        op_id = self._new_id()
        self._run("INSERT INTO operations (id, tenant, device_id, status, creation_time, body) VALUES (?, ?, ?, 'PENDING', ?, ?)",
                  op_id, tenant, device_id, now(), json.dumps(fragments))
        return self.operation(tenant, op_id)

    def operation(self, tenant, op_id):
        row = self._one("SELECT * FROM operations WHERE tenant = ? AND id = ?", tenant, op_id)
        return _operation(row) if row else None

    def operations(self, tenant, device_ids=None, status=None, fragment=None, offset=0, limit=5, newest_first=False):
        """A page of operations and the count of all that match."""
        where, args = ["tenant = ?"], [tenant]
        if device_ids is not None:
            where.append(f"device_id IN ({','.join('?' * len(device_ids))})")
            args += list(device_ids)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        rows = [_operation(r) for r in self._all(
            f"SELECT * FROM operations WHERE {' AND '.join(where)} ORDER BY id {'DESC' if newest_first else 'ASC'}", *args)]
        if fragment is not None:
            rows = [r for r in rows if fragment in r]
        return rows[offset:offset + limit], len(rows)

    def update_operation(self, tenant, op_id, status, fragments):
        current = self.operation(tenant, op_id)
        body = {k: v for k, v in current.items() if k not in OPERATION_META}
        body.update({k: v for k, v in fragments.items() if k not in OPERATION_META})
        self._run("UPDATE operations SET status = ?, body = ? WHERE tenant = ? AND id = ?",
                  status, json.dumps(body), tenant, op_id)
        return self.operation(tenant, op_id)

    # remote access configurations

    def create_configuration(self, tenant, device_id, body, sealed_secrets):
        config_id = self._new_id()
        self._run("INSERT INTO configurations (id, tenant, device_id, body, sealed_secrets) VALUES (?, ?, ?, ?, ?)",
                  config_id, tenant, device_id, json.dumps(body), sealed_secrets)
        return self.configuration(tenant, device_id, config_id)

    def configuration(self, tenant, device_id, config_id):
        row = self._one("SELECT * FROM configurations WHERE tenant = ? AND device_id = ? AND id = ?", tenant, device_id, config_id)
        return _configuration(row) if row else None

    def configurations(self, tenant, device_id=None):
        if device_id is None:
            rows = self._all("SELECT * FROM configurations WHERE tenant = ? ORDER BY id", tenant)
        else:
            rows = self._all("SELECT * FROM configurations WHERE tenant = ? AND device_id = ? ORDER BY id", tenant, device_id)
        return [_configuration(r) for r in rows]

    def update_configuration(self, tenant, device_id, config_id, body, sealed_secrets):
        self._run("UPDATE configurations SET body = ?, sealed_secrets = ? WHERE tenant = ? AND device_id = ? AND id = ?",
                  json.dumps(body), sealed_secrets, tenant, device_id, config_id)
        return self.configuration(tenant, device_id, config_id)

    def delete_configuration(self, tenant, device_id, config_id):
        self._run("DELETE FROM configurations WHERE tenant = ? AND device_id = ? AND id = ?", tenant, device_id, config_id)

    # tenant options

    def option(self, tenant, category, key):
        row = self._one("SELECT value FROM options WHERE tenant = ? AND category = ? AND key = ?", tenant, category, key)
        return row["value"] if row else None

    def put_option(self, tenant, category, key, value):
        self._run("INSERT INTO options (tenant, category, key, value) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (tenant, category, key) DO UPDATE SET value = excluded.value",
                  tenant, category, key, value)

    def delete_option(self, tenant, category, key):
        return self._run("DELETE FROM options WHERE tenant = ? AND category = ? AND key = ?", tenant, category, key).rowcount == 1

    # events

    def create_event(self, tenant, source_id, type_, text, time, moment, fragments):
        """`time` is kept as the client gave it; `moment` (microseconds since the epoch, UTC) orders and filters."""
        event_id = self._new_id()
        self._run("INSERT INTO events (id, tenant, source_id, type, time, moment, creation_time, body) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  event_id, tenant, source_id, type_, time, moment, now(), json.dumps({"text": text, **fragments}))
        return self.event(tenant, event_id)

    def event(self, tenant, event_id):
        row = self._one("SELECT * FROM events WHERE tenant = ? AND id = ?", tenant, event_id)
        return _event(row) if row else None

    def events(self, tenant, source_ids=None, type_=None, fragment=None, moment_from=None, moment_to=None,
               offset=0, limit=5, oldest_first=False):
        """A page of events, newest first by their time (the latest made first among equal times), and the
        count of all that match; `moment_from` is inclusive, `moment_to` exclusive."""
        where, args = ["tenant = ?"], [tenant]
        if source_ids is not None:
            where.append(f"source_id IN ({','.join('?' * len(source_ids))})")
            args += list(source_ids)
        for clause, value in (("type = ?", type_), ("moment >= ?", moment_from), ("moment < ?", moment_to)):
            if value is not None:
                where.append(clause)
                args.append(value)
        order = "ASC" if oldest_first else "DESC"
        rows = [_event(r) for r in self._all(
            f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY moment {order}, id {order}", *args)]
        if fragment is not None:
            rows = [r for r in rows if fragment in r]
        return rows[offset:offset + limit], len(rows)

    # new device requests

    def device_request(self, tenant, request_id):
        row = self._one("SELECT * FROM device_requests WHERE tenant = ? AND id = ?", tenant, request_id)
        return _device_request(row) if row else None

    def device_requests(self, tenant):
        return [_device_request(r) for r in self._all("SELECT * FROM device_requests WHERE tenant = ? ORDER BY creation_time, id", tenant)]

    def add_device_request(self, tenant, request_id):
        """False when a request with that id exists already."""
        cursor = self._run("INSERT OR IGNORE INTO device_requests (tenant, id, status, creation_time) "
                           "VALUES (?, ?, 'WAITING_FOR_CONNECTION', ?)", tenant, request_id, now())
        return cursor.rowcount == 1

    def set_device_request_status(self, tenant, request_id, status):
        self._run("UPDATE device_requests SET status = ? WHERE tenant = ? AND id = ?", status, tenant, request_id)

    def delete_device_request(self, tenant, request_id):
        return self._run("DELETE FROM device_requests WHERE tenant = ? AND id = ?", tenant, request_id).rowcount == 1


MANAGED_OBJECT_META = frozenset({"id", "self", "owner", "creationTime", "lastUpdated"})
OPERATION_META = frozenset({"id", "self", "deviceId", "status", "creationTime"})
EVENT_META = frozenset({"id", "self", "source", "type", "text", "time", "creationTime", "lastUpdated"})


def _managed_object(row):
    return {"id": str(row["id"]), "owner": row["owner"], "creationTime": row["creation_time"],
            "lastUpdated": row["last_updated"], **json.loads(row["body"])}


def _operation(row):
    return {"id": str(row["id"]), "deviceId": str(row["device_id"]), "creationTime": row["creation_time"],
            "status": row["status"], **json.loads(row["body"])}


def _event(row):
    """source is only {"id"} here: its self link is the request's to add."""
    return {"id": str(row["id"]), "creationTime": row["creation_time"], "type": row["type"], "time": row["time"],
            "source": {"id": str(row["source_id"])}, **json.loads(row["body"])}


def _configuration(row):
    return {"id": str(row["id"]), "deviceId": str(row["device_id"]), **json.loads(row["body"]),
            "sealed_secrets": row["sealed_secrets"]}


def _device_request(row):
    return {"id": row["id"], "status": row["status"], "creationTime": row["creation_time"]}
