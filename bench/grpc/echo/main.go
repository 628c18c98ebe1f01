// Command echo is the minimal peer of the transport benchmarks: a net/http
// server that answers every request with its own body, and a grpc-go
// server whose ModelInfer answers with the request's tensor bytes, both
// with nothing but the libraries' defaults. The host's per-request cost is
// compared with it side by side (bench/grpc).
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"

	"google.golang.org/grpc"

	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
)

type echo struct {
	pb.UnimplementedGRPCInferenceServiceServer
}

// ModelInfer answers with the input's name, datatype, shape and bytes.
func (echo) ModelInfer(_ context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	resp := &pb.ModelInferResponse{ModelName: req.GetModelName(), ModelVersion: "1", Id: req.GetId(), RawOutputContents: req.GetRawInputContents()}
	for _, in := range req.GetInputs() {
		resp.Outputs = append(resp.Outputs, &pb.ModelInferResponse_InferOutputTensor{Name: "output", Datatype: in.GetDatatype(), Shape: in.GetShape()})
	}
	return resp, nil
}

func main() {
	httpAddr := flag.String("http", "127.0.0.1:0", "HTTP echo listen address")
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "gRPC echo listen address")
	flag.Parse()
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		log.Fatal(err)
	}
	gl, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	// The benchmark reads the two addresses from the first line.
	log.SetFlags(0)
	log.Printf("http=%s grpc=%s", hl.Addr(), gl.Addr())
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	pb.RegisterGRPCInferenceServiceServer(gs, echo{})
	go func() { log.Fatal(gs.Serve(gl)) }()
	log.Fatal(http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
			w.Header().Set("Inference-Header-Content-Length", h)
		}
		if ct := r.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})))
}
