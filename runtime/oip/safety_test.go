package oip_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/oip"
)

func TestTokenGuardsInferenceAndStateChanges(t *testing.T) {
	infer := jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]")
	tests := []struct {
		name          string
		tokenForReads bool
		method, path  string
		body          []byte
		auth          string
		want          int
	}{
		{"infer without token", false, "POST", "/v2/models/double/infer", infer, "", 401},
		{"infer with wrong token", false, "POST", "/v2/models/double/infer", infer, "Bearer nope", 401},
		{"infer with a longer wrong token", false, "POST", "/v2/models/double/infer", infer, "Bearer s3cret-and-more", 401},
		{"infer with basic auth", false, "POST", "/v2/models/double/infer", infer, "Basic czNjcmV0", 401},
		{"infer with token", false, "POST", "/v2/models/double/infer", infer, "Bearer s3cret", 200},
		{"infer with lower-case scheme", false, "POST", "/v2/models/double/infer", infer, "bearer s3cret", 200},
		{"load without token", false, "POST", "/v2/repository/models/double/load", nil, "", 401},
		{"unload without token", false, "POST", "/v2/repository/models/double/unload", nil, "", 401},
		{"kernel load without token", false, "POST", "/v1/kernels", []byte(`{}`), "", 401},
		{"kernel unload without token", false, "DELETE", "/v1/kernels/k1", nil, "", 401},
		{"placement plan without token", false, "POST", "/v1/placement/plan", nil, "", 401},
		{"metadata open by default", false, "GET", "/v2/models/double", nil, "", 200},
		{"index open by default", false, "POST", "/v2/repository/index", nil, "", 200},
		{"metadata needs token when reads are guarded", true, "GET", "/v2/models/double", nil, "", 401},
		{"metadata with token when reads are guarded", true, "GET", "/v2/models/double", nil, "Bearer s3cret", 200},
		{"liveness always open", true, "GET", "/v2/health/live", nil, "", 200},
		{"readiness always open", true, "GET", "/v2/health/ready", nil, "", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{Access: oip.Access{Token: "s3cret", TokenForReads: tc.tokenForReads}}, oip.HostViews{})
			hdr := map[string]string{}
			if tc.auth != "" {
				hdr["Authorization"] = tc.auth
			}
			w := f.call(tc.method, tc.path, tc.body, hdr)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if w.Code == 401 {
				errorMessage(t, w)
				if !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("401 without WWW-Authenticate: Bearer")
				}
				if _, calls := f.backend.LastInput(); calls != 0 {
					t.Errorf("refused request reached the backend")
				}
			}
		})
	}
}

func TestLoopbackListenerRefusesForeignHostAndOrigin(t *testing.T) {
	infer := jsonInfer("FP32", []int{1, 4}, "[1,2,3,4]")
	tests := []struct {
		name         string
		allowed      []string
		method, path string
		header       map[string]string
		want         int
	}{
		{"127.0.0.1 with port", nil, "POST", "/v2/models/double/infer", map[string]string{"Host": "127.0.0.1:8090"}, 200},
		{"127.3.4.5", nil, "POST", "/v2/models/double/infer", map[string]string{"Host": "127.3.4.5"}, 200},
		{"localhost", nil, "POST", "/v2/models/double/infer", map[string]string{"Host": "localhost:8090"}, 200},
		{"LOCALHOST. with a trailing dot", nil, "POST", "/v2/models/double/infer", map[string]string{"Host": "LOCALHOST.:8090"}, 200},
		{"[::1]", nil, "POST", "/v2/models/double/infer", map[string]string{"Host": "[::1]:8090"}, 200},
		{"rebound name", nil, "POST", "/v2/models/double/infer", map[string]string{"Host": "attacker.example:8090"}, 403},
		{"rebound name on a read", nil, "GET", "/v2/models/double", map[string]string{"Host": "attacker.example"}, 403},
		{"localhost lookalike", nil, "GET", "/v2", map[string]string{"Host": "localhost.attacker.example"}, 403},
		{"empty Host", nil, "GET", "/v2", map[string]string{"Host": ""}, 403},
		{"health stays open for any Host", nil, "GET", "/v2/health/ready", map[string]string{"Host": "10.1.2.3:8090"}, 200},
		{"foreign Origin", nil, "POST", "/v2/models/double/infer", map[string]string{"Origin": "http://attacker.example"}, 403},
		{"null Origin", nil, "POST", "/v2/models/double/infer", map[string]string{"Origin": "null"}, 403},
		{"loopback Origin", nil, "POST", "/v2/models/double/infer", map[string]string{"Origin": "http://localhost:3000"}, 200},
		{"cross-site fetch", nil, "POST", "/v2/models/double/infer", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"same-origin fetch", nil, "POST", "/v2/models/double/infer", map[string]string{"Sec-Fetch-Site": "same-origin"}, 200},
		{"allow-listed name", []string{"node7.cluster.local"}, "POST", "/v2/models/double/infer", map[string]string{"Host": "Node7.cluster.local:8090"}, 200},
		{"allow-listed Origin", []string{"node7.cluster.local"}, "POST", "/v2/models/double/infer", map[string]string{"Origin": "https://node7.cluster.local"}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, oip.Options{Access: oip.Access{Loopback: true, AllowedHosts: tc.allowed}}, oip.HostViews{})
			w := f.call(tc.method, tc.path, infer, tc.header)
			if tc.method == "GET" {
				w = f.call(tc.method, tc.path, nil, tc.header)
			}
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if w.Code == 403 {
				errorMessage(t, w)
			}
		})
	}
}

func TestAllowListWithoutLoopbackChecksHost(t *testing.T) {
	f := newFixture(t, oip.Options{Access: oip.Access{AllowedHosts: []string{"kasmina.node7"}}}, oip.HostViews{})
	if w := f.call("GET", "/v2", nil, map[string]string{"Host": "kasmina.node7:8090"}); w.Code != 200 {
		t.Fatalf("allow-listed host: %d", w.Code)
	}
	if w := f.call("GET", "/v2", nil, map[string]string{"Host": "other.node:8090"}); w.Code != 403 {
		t.Fatalf("unlisted host: %d, want 403", w.Code)
	}
	open := newFixture(t, oip.Options{}, oip.HostViews{})
	if w := open.call("GET", "/v2", nil, map[string]string{"Host": "other.node:8090"}); w.Code != 200 {
		t.Fatalf("no check configured: %d, want 200", w.Code)
	}
}

func TestIsLoopbackAddr(t *testing.T) {
	tests := map[string]bool{
		"127.0.0.1:8090": true,
		"localhost:8090": true,
		"[::1]:8090":     true,
		"127.0.0.2:1":    true,
		":8090":          false,
		"0.0.0.0:8090":   false,
		"[::]:8090":      false,
		"10.0.0.1:8090":  false,
		"node7:8090":     false,
	}
	for addr, want := range tests {
		if got := oip.IsLoopbackAddr(addr); got != want {
			t.Errorf("IsLoopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestNewServerSetsEveryTimeout(t *testing.T) {
	s := oip.NewServer("127.0.0.1:0", http.NotFoundHandler(), nil)
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 || s.ErrorLog == nil {
		t.Fatalf("server limits not all set: %+v", s)
	}
	if s.ReadHeaderTimeout > s.ReadTimeout {
		t.Errorf("ReadHeaderTimeout %v above ReadTimeout %v", s.ReadHeaderTimeout, s.ReadTimeout)
	}
}

func TestCheckListenNeedsATokenBeyondLoopback(t *testing.T) {
	tests := []struct {
		addr, token string
		insecure    bool
		ok          bool
	}{
		{"127.0.0.1:8090", "", false, true},
		{"0.0.0.0:8090", "", false, false},
		{":8090", "", false, false},
		{"0.0.0.0:8090", "tok", false, true},
		{"10.0.0.5:8090", "", true, true},
	}
	for _, tc := range tests {
		err := oip.CheckListen(tc.addr, tc.token, tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, token=%q, insecure=%v) = %v", tc.addr, tc.token, tc.insecure, err)
		}
		if err != nil && (!errors.Is(err, oip.ErrInsecureListen) || !strings.Contains(err.Error(), tc.addr)) {
			t.Errorf("error %v does not name the address or the class", err)
		}
	}
}

// TestBearerAndHostCheck: the two rules both front ends share.
func TestBearerAndHostCheck(t *testing.T) {
	b := oip.NewBearer("s3cret")
	for header, want := range map[string]error{
		"Bearer s3cret":   nil,
		"bearer s3cret":   nil,
		"Bearer  s3cret ": nil,
		"":                oip.ErrNoBearer,
		"s3cret":          oip.ErrNoBearer,
		"Basic s3cret":    oip.ErrNoBearer,
		"Bearer s3cret2":  oip.ErrWrongBearer,
		"Bearer ":         oip.ErrWrongBearer,
	} {
		if err := b.Verify(header); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("Verify(%q) = %v, want %v", header, err, want)
		}
	}
	if oip.NewBearer("").Set() || !b.Set() {
		t.Error("Set() does not say whether a token is configured")
	}
	// A blank token is a token that matches nothing, not "no token".
	blank := oip.NewBearer(" ")
	if !blank.Set() || blank.Verify("Bearer  ") == nil || blank.Verify("Bearer") == nil {
		t.Error("a blank token matched a request")
	}

	h := oip.NewHostCheck(true, []string{"Kasmina.Local."})
	for hostport, want := range map[string]bool{
		"localhost:8470": true, "127.9.9.9": true, "[::1]:1": true, "kasmina.local": true, "KASMINA.LOCAL:8471": true,
		"evil.example": false, "": false, "127.0.0.1.nip.io:80": false,
	} {
		if got := h.Allows(hostport); got != want {
			t.Errorf("Allows(%q) = %v, want %v", hostport, got, want)
		}
	}
	if !h.On() || oip.NewHostCheck(false, nil).On() || !oip.NewHostCheck(false, []string{"x"}).On() {
		t.Error("On() does not follow loopback and the allow-list")
	}
}
