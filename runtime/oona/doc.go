// Package oona is the Kasmina host's client of the Oona message bus (Redis
// Streams), byte-compatible with the Python services' OonaClient, plus an
// embedded in-process bus used when no Redis is configured.
//
// # Selecting the bus
//
// Open(ctx, cfg, logger) returns a RedisBus when cfg.URL is set (from
// --oona URL, or REDIS_URL through ConfigFromEnv; the flag wins) and an
// EmbeddedBus otherwise. ParseURL fills what a URL leaves out as redis-py's
// from_url does (localhost, 6379, database 0); rediss:// enables TLS;
// redis://user:password@host/db authenticates as an ACL user; with no
// password in the URL, KASMINA_REDIS_PASSWORD_FILE (Config.PasswordFile)
// names a file holding it. A minimal ACL for a host:
//
//	ACL SETUSER kasmina on >secret resetkeys ~telemetry.* ~control.kasmina.commands* ~system.events.epoch
//	    resetchannels -@all +ping +hello +client|setname +xadd +xreadgroup +xread +xack +xgroup|create
//	    +xautoclaim +xpending +xrange +xrevrange +xinfo|groups
//
// # Wire format
//
// One stream per topic, named by the topic string. One entry per
// OonaMessage with one field per top-level field, in this order: event_id,
// sender_id, timestamp, trace_id, topic, payload. The payload is JSON
// (compact, keys sorted, numbers as encoding/json writes them); the other
// fields are their string form, the timestamp being the contract's JSON
// timestamp without quotes ("2026-03-01T12:30:45.123456Z"). The Python
// reader json.loads every field and keeps the raw string only when that
// fails, so Publish refuses (ErrAmbiguousField, naming the field) an
// event_id, sender_id or trace_id whose text parses as JSON ("42", "true",
// "null", "NaN", `"x"`, "[1]"), and ids that are not UTF-8. Reading
// (DecodeFields) is lenient where Python is not: string fields stay
// strings, a JSON-quoted string is unquoted, and the timestamp may use a
// space instead of 'T' (str(datetime)).
//
// # Publishing
//
// PublishHealthSignal is the fast path for the host's most frequent
// message: it writes the same entry as Publish of
// NewOonaMessage(sender, trace, telemetry.seed.health, <the signal's
// fields>), validated by HealthSignal.Validate, with the payload encoded
// from the struct (HealthSignal.AppendJSON: the contract's field order and
// number spelling, which the Python reader's json.loads does not care
// about) instead of through a map; the runtime uses it when its publisher
// has it. Event ids come from a pool of crypto/rand bytes refilled 4 KiB
// at a time, so an entry costs one allocation to encode.
//
// Publish validates and encodes the message on the caller's goroutine and
// queues it in a bounded buffer (10 000 messages and 16 MiB by default, a
// list of 512-entry blocks, so growing never copies under the lock); it
// never waits for the bus. One flusher goroutine writes batches of up to
// 256 entries as one pipeline of XADDs (XADD ... MAXLEN ~ 100000 on every
// stream but control.*), keeping two batches on the wire so that Redis
// works through one while the next waits in its socket buffer. The
// publisher's connection speaks RESP2 itself (resp.go: the commands of a
// batch appended into one buffer and written with one syscall, the replies
// parsed off a bufio.Reader); go-redis, which the consumer uses, boxed
// every argument and took more of the flusher's time than Redis spent on
// the XADDs. It honours the URL's TLS, ACL user and password, database and
// the dial/read/write timeouts. When Redis is unreachable the flusher
// backs off (100 ms doubling to 5 s, full jitter), probes with PING, and
// then resends in order everything not acknowledged (the batch that
// failed and the one behind it), so a write whose reply was lost can land
// twice: consumers de-duplicate by event_id. Each retry is one dial, so
// the retries counter follows the backoff schedule. Beyond the bound the
// oldest buffered message is dropped and counted (reason overflow); Close
// counts what its deadline
// left behind (reason shutdown); entries Redis refuses for good (WRONGTYPE)
// are dropped with reason permanent_error. Stats satisfy
// Published == Delivered + Dropped + Buffered. NewCollector/RegisterMetrics
// export kasmina_bus_messages_published_total{topic},
// kasmina_bus_messages_delivered_total{topic},
// kasmina_bus_messages_dropped_total{topic,reason},
// kasmina_bus_buffer_messages, kasmina_bus_buffer_bytes,
// kasmina_bus_buffer_high_watermark_messages, kasmina_bus_retries_total,
// kasmina_bus_reconnects_total and kasmina_bus_commands_total{outcome} on
// a registry the caller owns.
//
// # Commands
//
// ConsumeCommands reads control.kasmina.commands through the host's own
// consumer group ("kasmina-<host id>", consumer name = host id), created
// at "$" with MKSTREAM on first start so a new host does not replay
// history, and resumed from its position after a restart. It handles its
// own pending entries first, then reads new ones with XREADGROUP BLOCK.
// Each entry is decoded, de-duplicated by event_id (bounded LRU; an empty
// event_id is never taken for a duplicate), skipped and acknowledged when
// the handler does not serve its layer, else passed to
// CommandHandler.HandleCommand, with a deadline (CommandTimeout, 45 s by
// default), and acknowledged on success. Commands for the same seed
// (layer_name, seed_idx) run one at a time in the order read; commands for
// different seeds run concurrently (Lanes, 8 by default), so a slow load
// holds up only its own seed. A handler error whose failure class is
// permanent (not found, bad input, malformed, refused, conflict, too
// large, unsupported), and any malformed entry, is copied to
// control.kasmina.commands.dlq with dlq_reason, dlq_source_id and
// dlq_group fields, then acknowledged; any other error (unavailable,
// timeout, an unclassified one) leaves the entry pending, and a janitor
// (every 30 s) reclaims entries idle for 60 s with XAUTOCLAIM and
// dead-letters those delivered 5 times. Payloads (see
// COMMANDS.md):
//
//	load_kernel     {"command": "load_kernel", "layer_name": str, "seed_idx": int ≥ 0, "artifact_id": str}
//	unload_kernel   {"command": "unload_kernel", "layer_name": str, "seed_idx": int ≥ 0}
//	set_seed_state  {"command": "set_seed_state", "layer_name": str, "seed_idx": int ≥ 0, "state": SeedState}
//	set_alpha       {"command": "set_alpha", "layer_name": str, "seed_idx": int ≥ 0, "alpha": 0 ≤ float ≤ 1}
//
// ConsumeEpochs reads system.events.epoch (XREAD from "$", no group) and
// calls back with the payload's epoch; an entry without a valid epoch is
// logged as a warning and counted (ConsumerStats.EpochsIgnored, outcome
// epoch_ignored).
//
// # Embedded bus
//
// EmbeddedBus writes each published message as one JSON line (the
// contract's JSON of the OonaMessage) to a file or stdout, and delivers it
// to in-process subscribers, so the host's own command and epoch consumers
// work on one machine without Redis. It shares the buffered publisher, and
// the same publisher test suite runs against both buses. It has no
// dead-letter stream: dead letters are logged, counted and kept
// (DeadLetters).
package oona
