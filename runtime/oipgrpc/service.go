package oipgrpc

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip"
	pb "github.com/esper/kasmina-host/runtime/oipgrpc/inferencepb"
)

// service implements inference.GRPCInferenceService over a Backend.
// Every error it returns carries a class (package failure); the gate turns
// it into a status.
type service struct {
	pb.UnimplementedGRPCInferenceServiceServer
	backend Backend
	opts    Options
	log     *slog.Logger
}

// platform and layerPlatform (a layer's) are reported in model
// metadata, as over HTTP.
const (
	platform      = "kasmina"
	layerPlatform = "kasmina-layer"
)

func (s *service) ServerLive(context.Context, *pb.ServerLiveRequest) (*pb.ServerLiveResponse, error) {
	return &pb.ServerLiveResponse{Live: true}, nil
}

// ServerReady answers ready=false, not an error, when the server cannot
// serve every loaded model: the question had an answer.
func (s *service) ServerReady(ctx context.Context, _ *pb.ServerReadyRequest) (*pb.ServerReadyResponse, error) {
	ok, reason := s.backend.Ready()
	if !ok {
		s.log.DebugContext(ctx, "not ready", slog.String("reason", reason))
	}
	return &pb.ServerReadyResponse{Ready: ok}, nil
}

// Extensions reported by ServerMetadata: the protocol extensions this
// endpoint serves.
func (s *service) extensions() []string {
	ext := []string{"model_repository"}
	if s.opts.SharedMemory != nil {
		ext = append(ext, "system_shared_memory")
	}
	return ext
}

func (s *service) ServerMetadata(context.Context, *pb.ServerMetadataRequest) (*pb.ServerMetadataResponse, error) {
	return &pb.ServerMetadataResponse{Name: s.opts.ServerName, Version: s.opts.Version, Extensions: s.extensions()}, nil
}

// lookup finds a model and checks the version, if the request names one.
func (s *service) lookup(name, version string) (oip.ModelInfo, error) {
	m, ok := s.backend.Model(name)
	if !ok {
		return m, failure.Errorf(failure.NotFound, "no model named %q", name)
	}
	if version != "" && version != versionOf(m) {
		return m, failure.Errorf(failure.NotFound, "model %q has no version %q (it has %q)", name, version, versionOf(m))
	}
	return m, nil
}

func versionOf(m oip.ModelInfo) string {
	if m.Version == "" {
		return "1"
	}
	return m.Version
}

// ModelReady answers ready=false for a known model that is not ready, and
// NOT_FOUND for an unknown one.
func (s *service) ModelReady(_ context.Context, req *pb.ModelReadyRequest) (*pb.ModelReadyResponse, error) {
	m, err := s.lookup(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, err
	}
	return &pb.ModelReadyResponse{Ready: m.State == oip.StateReady}, nil
}

func (s *service) ModelMetadata(_ context.Context, req *pb.ModelMetadataRequest) (*pb.ModelMetadataResponse, error) {
	m, err := s.lookup(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, err
	}
	props := map[string]string{
		"state":     m.State,
		"placement": m.Placement,
		"executor":  m.Executor,
		"degraded":  boolString(m.Degraded),
	}
	if m.Reason != "" {
		props["reason"] = m.Reason
	}
	if m.DegradedReason != "" {
		props["degraded_reason"] = m.DegradedReason
	}
	if m.MaxBatch > 0 {
		props["max_batch"] = itoa(int64(m.MaxBatch))
	}
	resp := &pb.ModelMetadataResponse{
		Name:       m.Name,
		Versions:   []string{versionOf(m)},
		Platform:   platform,
		Inputs:     []*pb.ModelMetadataResponse_TensorMetadata{{Name: oip.InputName, Datatype: "FP32", Shape: batchShape(m.InputShape)}},
		Outputs:    []*pb.ModelMetadataResponse_TensorMetadata{{Name: oip.OutputName, Datatype: "FP32", Shape: batchShape(m.OutputShape)}},
		Properties: props,
	}
	if m.Layer {
		// A layer: its optional inputs are listed in the property
		// optional_inputs (the protocol's metadata has no such flag).
		resp.Platform = layerPlatform
		resp.Inputs, resp.Outputs = nil, nil
		var optional []string
		for _, t := range oip.LayerTensors(m) {
			tm := &pb.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: "FP32", Shape: batchShape(t.Shape)}
			switch {
			case t.Output:
				resp.Outputs = append(resp.Outputs, tm)
			default:
				resp.Inputs = append(resp.Inputs, tm)
			}
			if t.Optional {
				optional = append(optional, t.Name)
			}
		}
		props["optional_inputs"] = strings.Join(optional, ",")
	}
	return resp, nil
}

// batchShape prefixes the batch dimension; an unknown per-sample shape is
// [-1, -1], as over HTTP.
func batchShape(s []int) []int64 {
	if s == nil {
		return []int64{-1, -1}
	}
	out := make([]int64, 0, len(s)+1)
	out = append(out, -1)
	for _, d := range s {
		out = append(out, int64(d))
	}
	return out
}

// RepositoryIndex lists the one repository's models; repository_name is
// ignored, as Triton does.
func (s *service) RepositoryIndex(_ context.Context, req *pb.RepositoryIndexRequest) (*pb.RepositoryIndexResponse, error) {
	models := s.backend.Models()
	out := &pb.RepositoryIndexResponse{Models: make([]*pb.RepositoryIndexResponse_ModelIndex, 0, len(models))}
	for _, m := range models {
		if req.GetReady() && m.State != oip.StateReady {
			continue
		}
		out.Models = append(out.Models, &pb.RepositoryIndexResponse_ModelIndex{Name: m.Name, Version: versionOf(m), State: m.State, Reason: m.Reason})
	}
	return out, nil
}

// checkRepositoryParams refuses the two parameters that would replace a
// model's files; Triton's others (unload_dependents) are ignored.
func checkRepositoryParams(params map[string]*pb.ModelRepositoryParameter) error {
	for k := range params {
		if k == "config" || strings.HasPrefix(k, "file:") {
			return failure.Errorf(failure.Unsupported, "parameters[%q]: loading a model from a supplied configuration or files; load a CompiledKernel document with POST /v1/kernels", k)
		}
	}
	return nil
}

func (s *service) RepositoryModelLoad(ctx context.Context, req *pb.RepositoryModelLoadRequest) (*pb.RepositoryModelLoadResponse, error) {
	if err := checkRepositoryParams(req.GetParameters()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.LoadTimeout)
	defer cancel()
	if err := s.backend.LoadModel(ctx, req.GetModelName()); err != nil {
		return nil, fmt.Errorf("loading model %q: %w", req.GetModelName(), err)
	}
	return &pb.RepositoryModelLoadResponse{}, nil
}

func (s *service) RepositoryModelUnload(ctx context.Context, req *pb.RepositoryModelUnloadRequest) (*pb.RepositoryModelUnloadResponse, error) {
	if err := checkRepositoryParams(req.GetParameters()); err != nil {
		return nil, err
	}
	if err := s.backend.UnloadModel(ctx, req.GetModelName()); err != nil {
		return nil, fmt.Errorf("unloading model %q: %w", req.GetModelName(), err)
	}
	return &pb.RepositoryModelUnloadResponse{}, nil
}

func (s *service) sharedMemory() error {
	if s.opts.SharedMemory == nil {
		return failure.Errorf(failure.Unsupported, "system shared memory is not enabled on this host")
	}
	return nil
}

func (s *service) SystemSharedMemoryStatus(_ context.Context, req *pb.SystemSharedMemoryStatusRequest) (*pb.SystemSharedMemoryStatusResponse, error) {
	if err := s.sharedMemory(); err != nil {
		return nil, err
	}
	regions, err := s.opts.SharedMemory.Status(req.GetName())
	if err != nil {
		return nil, err
	}
	out := &pb.SystemSharedMemoryStatusResponse{Regions: make(map[string]*pb.SystemSharedMemoryStatusResponse_RegionStatus, len(regions))}
	for _, r := range regions {
		out.Regions[r.Name] = &pb.SystemSharedMemoryStatusResponse_RegionStatus{Name: r.Name, Key: r.Key, Offset: r.Offset, ByteSize: r.ByteSize}
	}
	return out, nil
}

func (s *service) SystemSharedMemoryRegister(_ context.Context, req *pb.SystemSharedMemoryRegisterRequest) (*pb.SystemSharedMemoryRegisterResponse, error) {
	if err := s.sharedMemory(); err != nil {
		return nil, err
	}
	if err := s.opts.SharedMemory.Register(req.GetName(), req.GetKey(), req.GetOffset(), req.GetByteSize()); err != nil {
		return nil, err
	}
	return &pb.SystemSharedMemoryRegisterResponse{}, nil
}

// SystemSharedMemoryUnregister unregisters one region, or every region
// when the name is empty; an unknown name is not an error, as in Triton.
func (s *service) SystemSharedMemoryUnregister(_ context.Context, req *pb.SystemSharedMemoryUnregisterRequest) (*pb.SystemSharedMemoryUnregisterResponse, error) {
	if err := s.sharedMemory(); err != nil {
		return nil, err
	}
	if req.GetName() == "" {
		s.opts.SharedMemory.UnregisterAll()
	} else {
		s.opts.SharedMemory.Unregister(req.GetName())
	}
	return &pb.SystemSharedMemoryUnregisterResponse{}, nil
}
