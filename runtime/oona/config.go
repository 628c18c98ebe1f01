package oona

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/esper/kasmina-host/internal/regularfile"
)

// Environment variables read by ConfigFromEnv.
const (
	// EnvRedisURL selects Redis, as it does for the Python services.
	EnvRedisURL = "REDIS_URL"
	// EnvPasswordFile names a file holding the Redis password; it is used
	// when the URL carries no password, so the secret stays out of argv.
	EnvPasswordFile = "KASMINA_REDIS_PASSWORD_FILE"
)

// DefaultRedisURL is what the Python Oona client connects to when REDIS_URL
// is unset; ParseURL fills the parts a URL leaves out from it.
const DefaultRedisURL = "redis://localhost:6379/0"

// ErrBadURL is returned (wrapped) by ParseURL for a URL it cannot use.
var ErrBadURL = errors.New("oona: bad Redis URL")

// Config selects and tunes the bus. The zero value with HostID set is
// usable: no URL means the embedded bus writing JSON lines to stdout.
type Config struct {
	// URL is the Redis URL (redis://, rediss://, unix://). Empty selects
	// the embedded in-process bus.
	URL string
	// PasswordFile, when set and the URL has no password, holds the Redis
	// password (trailing newline ignored).
	PasswordFile string
	// HostID names this host: the consumer name, the default consumer
	// group suffix and the default sender id.
	HostID string
	// EmbeddedPath is where the embedded bus writes its JSON lines: a file
	// path (appended to) or "-" / "" for stdout. Ignored with Redis.
	EmbeddedPath string
	// Publisher tunes the buffered publisher.
	Publisher PublisherOptions
	// Consumer tunes the command consumer.
	Consumer ConsumerOptions
}

// ConfigFromEnv returns a Config with URL and PasswordFile read from the
// environment through getenv (os.Getenv in production). A --oona flag, when
// given, should overwrite URL afterwards: the flag wins over REDIS_URL.
func ConfigFromEnv(getenv func(string) string) Config {
	return Config{
		URL:          strings.TrimSpace(getenv(EnvRedisURL)),
		PasswordFile: strings.TrimSpace(getenv(EnvPasswordFile)),
	}
}

// ParseURL turns a Redis URL into go-redis options, filling the parts left
// out the way redis-py's from_url does for the Python client (host
// localhost, port 6379, database 0). A bare "host:port" is accepted as
// redis://host:port. Username and password come from the URL userinfo
// (ACL user), rediss:// enables TLS with the host as server name.
func ParseURL(raw string) (*redis.Options, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, fmt.Errorf("%w: empty URL", ErrBadURL)
	}
	if !strings.Contains(raw, "://") {
		raw = "redis://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, password included
		}
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	switch u.Scheme {
	case "redis", "rediss", "unix":
	default:
		return nil, fmt.Errorf("%w: scheme %q: want redis, rediss or unix", ErrBadURL, u.Scheme)
	}
	if u.Scheme != "unix" {
		if p := u.Port(); p != "" {
			n, perr := strconv.Atoi(p)
			if perr != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("%w: port %q: want 1..65535", ErrBadURL, p)
			}
		}
		if path := strings.Trim(u.Path, "/"); path != "" {
			if n, derr := strconv.Atoi(path); derr != nil || n < 0 {
				return nil, fmt.Errorf("%w: database %q in path: want a non-negative number", ErrBadURL, path)
			}
		}
	}
	opts, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrBadURL, redactURL(raw), err)
	}
	return opts, nil
}

// redactURL hides a password in a URL before it is put in an error or log.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// RedactedURL returns the configured URL with any password masked, for logs.
func (c Config) RedactedURL() string { return redactURL(c.URL) }

// redisOptions resolves the URL and password file into go-redis options.
func (c Config) redisOptions() (*redis.Options, error) {
	opts, err := ParseURL(c.URL)
	if err != nil {
		return nil, err
	}
	if opts.Password == "" && c.PasswordFile != "" {
		b, err := regularfile.ReadFile(c.PasswordFile, 64<<10)
		if err != nil {
			return nil, fmt.Errorf("oona: reading password file %s (%s): %w", c.PasswordFile, EnvPasswordFile, err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return nil, fmt.Errorf("oona: password file %s (%s) is empty", c.PasswordFile, EnvPasswordFile)
		}
		opts.Password = pw
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 2 * time.Second
	}
	return opts, nil
}
