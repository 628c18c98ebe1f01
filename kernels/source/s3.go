package source

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config configures an S3 source. S3ConfigFromEnv fills it the standard
// AWS way.
type S3Config struct {
	// Endpoint is the service URL, for example http://minio:9000 for
	// Esper's MinIO; http or https comes from its scheme (https when it has
	// none). Empty means Amazon S3.
	Endpoint string
	// Region is the bucket region. Empty means us-east-1 for a custom
	// endpoint and a lookup for Amazon S3.
	Region string
	// AccessKeyID, SecretAccessKey and SessionToken are static credentials.
	// When AccessKeyID is empty, the shared credentials file is tried
	// (SharedCredentialsFile, Profile), then the instance role if UseIAM,
	// and otherwise requests are anonymous.
	AccessKeyID, SecretAccessKey, SessionToken string
	// CredentialsFrom names the environment variables AccessKeyID and
	// SecretAccessKey came from ("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
	// or Esper's "S3_ACCESS_KEY/S3_SECRET_KEY"), for the log and for
	// errors; never their values. Empty when they were set otherwise.
	CredentialsFrom string
	// SharedCredentialsFile and Profile select the shared credentials file
	// entry (empty: ~/.aws/credentials and profile "default").
	SharedCredentialsFile, Profile string
	// UseIAM allows credentials from the instance metadata service.
	UseIAM bool
	// VirtualHostStyle addresses buckets as bucket.host; by default a custom
	// endpoint is addressed path-style (host/bucket), as MinIO expects, and
	// Amazon S3 is left to the client to decide.
	VirtualHostStyle bool
	// MaxBytes caps the object size (default DefaultMaxBytes).
	MaxBytes int64
	// MaxRetries is the number of requests the client makes at most
	// (default 3). The client retries network errors and 5xx with backoff.
	MaxRetries int
	// ConnectTimeout bounds one TCP connect (default 5s); Timeout bounds the
	// whole fetch (default 3m).
	ConnectTimeout, Timeout time.Duration
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
}

// S3ConfigFromEnv reads the configuration the AWS tools read:
// AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then Esper's own S3_ENDPOINT_URL
// (and S3_ENDPOINT, which some Esper services use) for the endpoint;
// AWS_REGION, then AWS_DEFAULT_REGION; AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, else the pair Esper's compose
// files pass, S3_ACCESS_KEY and S3_SECRET_KEY (the AWS_* pair wins when
// AWS_ACCESS_KEY_ID is set; CredentialsFrom says which pair was read);
// AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE. Pass os.Getenv.
func S3ConfigFromEnv(getenv func(string) string) S3Config {
	first := func(keys ...string) string {
		for _, k := range keys {
			if v := strings.TrimSpace(getenv(k)); v != "" {
				return v
			}
		}
		return ""
	}
	cfg := S3Config{
		Endpoint:              first("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "S3_ENDPOINT"),
		Region:                first("AWS_REGION", "AWS_DEFAULT_REGION"),
		SessionToken:          getenv("AWS_SESSION_TOKEN"),
		SharedCredentialsFile: getenv("AWS_SHARED_CREDENTIALS_FILE"),
		Profile:               getenv("AWS_PROFILE"),
	}
	for _, pair := range [...][2]string{{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, {"S3_ACCESS_KEY", "S3_SECRET_KEY"}} {
		if id := getenv(pair[0]); id != "" {
			cfg.AccessKeyID, cfg.SecretAccessKey, cfg.CredentialsFrom = id, getenv(pair[1]), pair[0]+"/"+pair[1]
			break
		}
	}
	return cfg
}

// S3 fetches kernels from s3://bucket/key references through minio-go, which
// speaks to Amazon S3 and to any S3-compatible store such as MinIO.
type S3 struct {
	client   *minio.Client
	endpoint string
	maxBytes int64
	timeout  time.Duration
}

// NewS3 returns an S3 source. It makes no request.
func NewS3(cfg S3Config) (*S3, error) {
	host, secure, custom, err := parseEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	region := cfg.Region
	if region == "" && custom {
		region = "us-east-1"
	}
	var creds *credentials.Credentials
	if cfg.AccessKeyID != "" {
		if cfg.SecretAccessKey == "" {
			names := cfg.CredentialsFrom
			if names == "" {
				names = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
			}
			id, secret, _ := strings.Cut(names, "/")
			return nil, fmt.Errorf("s3: %s is set but %s is not", id, secret)
		}
		creds = credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)
	} else {
		providers := []credentials.Provider{
			&credentials.FileAWSCredentials{Filename: cfg.SharedCredentialsFile, Profile: cfg.Profile},
		}
		if cfg.UseIAM {
			providers = append(providers, &credentials.IAM{})
		}
		creds = credentials.NewChainCredentials(providers)
	}
	lookup := minio.BucketLookupAuto
	switch {
	case cfg.VirtualHostStyle:
		lookup = minio.BucketLookupDNS
	case custom:
		lookup = minio.BucketLookupPath
	}
	connect := cfg.ConnectTimeout
	if connect <= 0 {
		connect = 5 * time.Second
	}
	transport := cfg.Transport
	if transport == nil {
		transport = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   connect,
			ResponseHeaderTimeout: time.Minute,
			DisableCompression:    true,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
		}
	}
	retries := cfg.MaxRetries
	if retries <= 0 {
		retries = 3
	}
	client, err := minio.New(host, &minio.Options{
		Creds:        creds,
		Secure:       secure,
		Region:       region,
		BucketLookup: lookup,
		Transport:    transport,
		MaxRetries:   retries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3: endpoint %q: %w", cfg.Endpoint, err)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 3 * time.Minute
	}
	return &S3{client: client, endpoint: client.EndpointURL().String(), maxBytes: capOrDefault(cfg.MaxBytes), timeout: timeout}, nil
}

// parseEndpoint splits an endpoint URL into what minio-go takes.
func parseEndpoint(e string) (host string, secure, custom bool, err error) {
	if e == "" {
		return "s3.amazonaws.com", true, false, nil
	}
	if !strings.Contains(e, "://") {
		e = "https://" + e
	}
	u, err := url.Parse(e)
	if err != nil {
		return "", false, false, fmt.Errorf("s3: endpoint: %w", err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http":
	case "https":
		secure = true
	default:
		return "", false, false, fmt.Errorf("s3: endpoint %q: scheme must be http or https", e)
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", false, false, fmt.Errorf("s3: endpoint %q: want scheme://host[:port] with no path, query or credentials", e)
	}
	return u.Host, secure, true, nil
}

// Endpoint returns the URL requests go to.
func (s *S3) Endpoint() string { return s.endpoint }

// Fetch downloads the object ref names. The object's size is checked against
// the cap before its body is read.
func (s *S3) Fetch(ctx context.Context, ref string) (Blob, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Blob{}, err
	}
	if r.Scheme != SchemeS3 {
		return Blob{}, fmt.Errorf("%w: s3 source cannot fetch %s", ErrUnsupportedScheme, r.Redacted())
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	name := r.String()
	obj, err := s.client.GetObject(ctx, r.Host, r.Path, minio.GetObjectOptions{})
	if err != nil {
		return Blob{}, s.objectError(name, err)
	}
	defer obj.Close()
	info, err := obj.Stat()
	if err != nil {
		return Blob{}, s.objectError(name, err)
	}
	data, sum, err := readCapped(obj, info.Size, s.maxBytes, name)
	if err != nil {
		return Blob{}, err
	}
	return Blob{Data: data, SHA256: sum, Size: int64(len(data)), Origin: name}, nil
}

func (s *S3) objectError(name string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchKey, minio.NoSuchBucket:
		return fmt.Errorf("%w: %s at %s: %w", ErrNotFound, name, s.endpoint, err)
	}
	return fmt.Errorf("fetching %s from %s: %w", name, s.endpoint, err)
}
