// Package inferencepb is the Go code generated from inference.proto: the
// messages and the service stubs of the Open Inference Protocol's gRPC
// service (inference.GRPCInferenceService) as the host serves it. Nothing
// here is written by hand but this file and the proto.
//
// Regenerating needs protoc (3.21 or later) and the two plugins, at the
// versions named in the generated files' headers, on PATH:
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
//	go generate ./runtime/oipgrpc/inferencepb
package inferencepb

//go:generate protoc -I . --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative inference.proto
