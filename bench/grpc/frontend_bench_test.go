package grpcbench

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/esper/kasmina-host/runtime/oip"
	"github.com/esper/kasmina-host/runtime/oip/oiptest"
	"github.com/esper/kasmina-host/runtime/oipgrpc"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
	"github.com/esper/kasmina-host/runtime/shm"
)

// echoServer is bench/grpc/echo's gRPC side, in process.
type echoServer struct {
	pb.UnimplementedGRPCInferenceServiceServer
}

func (echoServer) ModelInfer(_ context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	resp := &pb.ModelInferResponse{ModelName: req.GetModelName(), ModelVersion: "1", Id: req.GetId(), RawOutputContents: req.GetRawInputContents()}
	for _, in := range req.GetInputs() {
		resp.Outputs = append(resp.Outputs, &pb.ModelInferResponse_InferOutputTensor{Name: "output", Datatype: in.GetDatatype(), Shape: in.GetShape()})
	}
	return resp, nil
}

// BenchmarkGRPCFrontEnd separates the gRPC front end's own cost from the
// runtime's: oipgrpc's server over oiptest's in-memory identity model
// (with and without metrics) against the echo server, all in this process
// on loopback, one connection.
func BenchmarkGRPCFrontEnd(b *testing.B) {
	fake := oiptest.New()
	fake.Add(oip.ModelInfo{Name: "seed-linear-64", InputShape: []int{64}, OutputShape: []int{64}}, oiptest.Scale(1))
	m, err := oipgrpc.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	req := rawRequest("seed-linear-64", 1, 64, values(64))
	b.Run("1x64", func(b *testing.B) {
		var sides []side
		for _, s := range []struct {
			name  string
			serve func(net.Listener) (stop func())
		}{
			{"oipgrpc", func(ln net.Listener) func() {
				srv := oipgrpc.New(fake, oipgrpc.Options{Metrics: m}, nil)
				go srv.Serve(ln)
				return func() { _ = srv.Shutdown(context.Background()) }
			}},
			{"oipgrpc-no-metrics", func(ln net.Listener) func() {
				srv := oipgrpc.New(fake, oipgrpc.Options{}, nil)
				go srv.Serve(ln)
				return func() { _ = srv.Shutdown(context.Background()) }
			}},
			{"echo", func(ln net.Listener) func() {
				gs := grpc.NewServer()
				pb.RegisterGRPCInferenceServiceServer(gs, echoServer{})
				go gs.Serve(ln)
				return gs.Stop
			}},
		} {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(s.serve(ln))
			c := grpcConn(b, ln.Addr().String())
			sides = append(sides, side{s.name, func() error {
				_, err := c.ModelInfer(context.Background(), req)
				return err
			}})
		}
		interleaved(b, 256, 1, sides...)
	})
}

// BenchmarkHTTPFrontEnd is BenchmarkGRPCFrontEnd's HTTP counterpart: oip's
// handler over the in-memory identity model against a handler echoing the
// body, in this process on loopback, one connection, the JSON and binary
// requests of BenchmarkTransports.
func BenchmarkHTTPFrontEnd(b *testing.B) {
	fake := oiptest.New()
	fake.Add(oip.ModelInfo{Name: "seed-linear-64", InputShape: []int{64}, OutputShape: []int{64}}, oiptest.Scale(1))
	jsonReq := jsonBody("seed-linear-64", 1, 64, values(64))
	binReq, binHL := binaryBody(1, 64, values(64))
	type endpoint struct{ name, url string }
	var endpoints []endpoint
	for _, s := range []struct {
		name    string
		handler http.Handler
	}{
		{"oip", oip.NewHandler(fake, oip.HostViews{}, oip.Options{}, nil)},
		{"echo", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
				w.Header().Set("Inference-Header-Content-Length", h)
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write(body)
		})},
	} {
		srv := httptest.NewServer(s.handler)
		defer srv.Close()
		endpoints = append(endpoints, endpoint{s.name, srv.URL + "/v2/models/seed-linear-64/infer"})
	}
	for _, c := range []struct {
		name string
		body []byte
		hl   int
	}{{"json-1x64", jsonReq, -1}, {"binary-1x64", binReq, binHL}} {
		b.Run(c.name, func(b *testing.B) {
			var sides []side
			for _, e := range endpoints {
				client := httpClient()
				buf := make([]byte, 0, 64<<10)
				sides = append(sides, side{e.name, func() error {
					_, err := post(client, e.url, c.body, c.hl, buf)
					return err
				}})
			}
			interleaved(b, int64(len(c.body)), 1, sides...)
		})
	}
}

// BenchmarkSharedMemoryFrontEnd is the shared memory comparison with the
// runtime replaced by the in-memory identity model (which still allocates
// its output): 256×1024 FP32 through oip's binary extension and through
// system shared memory, in this process on loopback. Against
// BenchmarkTransports' shm rows, it says how much of the ratio the
// transport leaves to the runtime's per-request work.
func BenchmarkSharedMemoryFrontEnd(b *testing.B) {
	const batch, width = 256, 1024
	const nbytes = batch * width * 4
	fake := oiptest.New()
	fake.Add(oip.ModelInfo{Name: "relu-1024", InputShape: []int{width}, OutputShape: []int{width}}, oiptest.Scale(1))
	dir := b.TempDir()
	f, err := os.Create(filepath.Join(dir, "tensors"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(2 * nbytes); err != nil {
		b.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 2*nbytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(mem)
	reg := shm.New(shm.Options{Dir: dir})
	defer reg.Close()
	for i, name := range []string{"in", "out"} {
		if err := reg.Register(name, "/tensors", uint64(i*nbytes), nbytes); err != nil {
			b.Fatal(err)
		}
	}
	srv := httptest.NewServer(oip.NewHandler(fake, oip.HostViews{}, oip.Options{SharedMemory: reg}, nil))
	defer srv.Close()
	url := srv.URL + "/v2/models/relu-1024/infer"
	out := make([]byte, nbytes)
	b.Run("256x1024", func(b *testing.B) {
		binHTTP, shmHTTP := httpSharedMemorySides(url, batch, width, values(batch*width), mem, out)
		interleaved(b, 2*nbytes, 25, binHTTP, shmHTTP)
	})
}
