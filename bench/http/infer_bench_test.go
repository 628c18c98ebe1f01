package httpbench

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
)

// request builds an inference request for a [batch, width] FP32 input as
// Triton's client would send it (binary) or as curl would (JSON).
func request(batch, width int, asBinary bool) (body []byte, headerLen int) {
	rng := rand.New(rand.NewPCG(5, 6))
	vals := make([]float32, batch*width)
	for i := range vals {
		vals[i] = rng.Float32()*2 - 1
	}
	if asBinary {
		raw := make([]byte, 0, 4*len(vals))
		for _, v := range vals {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(v))
		}
		hdr := fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, batch, width, len(raw))
		return append([]byte(hdr), raw...), len(hdr)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"FP32","data":[`, batch, width)
	for i, v := range vals {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatFloat(float64(v), 'g', -1, 32))
	}
	sb.WriteString("]}]}")
	return []byte(sb.String()), -1
}

// BenchmarkInferOverLoopback measures one inference round trip through a
// real HTTP server on 127.0.0.1 with an identity model, for a 1×64 and a
// 32×512 FP32 tensor, in JSON and in binary.
func BenchmarkInferOverLoopback(b *testing.B) {
	backend := oiptest.New()
	for _, w := range []int{64, 512} {
		backend.Add(oip.ModelInfo{Name: "id" + strconv.Itoa(w), InputShape: []int{w}, OutputShape: []int{w}, Placement: "cpu", Executor: "cpu-f32"}, oiptest.Scale(1))
	}
	srv := httptest.NewServer(oip.NewHandler(backend, oip.HostViews{}, oip.Options{Access: oip.Access{Loopback: true}}, nil))
	defer srv.Close()
	client := srv.Client()
	for _, mode := range []string{"json", "binary"} {
		for _, sz := range [][2]int{{1, 64}, {32, 512}} {
			b.Run(fmt.Sprintf("%s/%dx%d", mode, sz[0], sz[1]), func(b *testing.B) {
				body, hl := request(sz[0], sz[1], mode == "binary")
				url := srv.URL + "/v2/models/id" + strconv.Itoa(sz[1]) + "/infer"
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					req, err := http.NewRequest("POST", url, bytes.NewReader(body))
					if err != nil {
						b.Fatal(err)
					}
					if hl >= 0 {
						req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(hl))
					}
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
		}
	}
}
