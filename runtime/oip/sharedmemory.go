package oip

import (
	"net/http"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/shm"
)

// The system shared memory extension's routes, as Triton's extension
// document specifies them; the registry is shared with the gRPC front end.

func (s *server) sharedMemory() (*shm.Registry, error) {
	if s.opts.SharedMemory == nil {
		return nil, failure.Errorf(failure.Unsupported, "system shared memory is not enabled on this host")
	}
	return s.opts.SharedMemory, nil
}

type regionStatus struct {
	Name     string `json:"name"`
	Key      string `json:"key"`
	Offset   uint64 `json:"offset"`
	ByteSize uint64 `json:"byte_size"`
}

// shmStatus answers every region, or the one in the path (404 unknown).
func (s *server) shmStatus(w http.ResponseWriter, r *http.Request) error {
	reg, err := s.sharedMemory()
	if err != nil {
		return err
	}
	regions, err := reg.Status(r.PathValue("region"))
	if err != nil {
		return err
	}
	out := make([]regionStatus, len(regions))
	for i, g := range regions {
		out[i] = regionStatus{Name: g.Name, Key: g.Key, Offset: g.Offset, ByteSize: g.ByteSize}
	}
	return writeJSON(w, out)
}

// registerRequest is the body of a register request; the fields are
// pointers so that a missing one is named.
type registerRequest struct {
	Key      *string `json:"key"`
	Offset   *int64  `json:"offset"`
	ByteSize *int64  `json:"byte_size"`
}

func (s *server) shmRegister(w http.ResponseWriter, r *http.Request) error {
	reg, err := s.sharedMemory()
	if err != nil {
		return err
	}
	var req registerRequest
	if err := s.readJSONBody(w, r, &req); err != nil {
		return err
	}
	switch {
	case req.Key == nil:
		return badInput("key: missing (the shared memory object's name, as given to shm_open)")
	case req.ByteSize == nil:
		return badInput("byte_size: missing")
	case *req.ByteSize < 0:
		return badInput("byte_size: negative (%d)", *req.ByteSize)
	case req.Offset != nil && *req.Offset < 0:
		return badInput("offset: negative (%d)", *req.Offset)
	}
	var offset uint64
	if req.Offset != nil {
		offset = uint64(*req.Offset)
	}
	if err := reg.Register(r.PathValue("region"), *req.Key, offset, uint64(*req.ByteSize)); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

// shmUnregister unregisters the region in the path, or every region; an
// unknown name is not an error, as in Triton.
func (s *server) shmUnregister(w http.ResponseWriter, r *http.Request) error {
	reg, err := s.sharedMemory()
	if err != nil {
		return err
	}
	if name := r.PathValue("region"); name != "" {
		reg.Unregister(name)
	} else {
		reg.UnregisterAll()
	}
	return writeJSON(w, struct{}{})
}

// holdTensors holds the regions req names for its outputs and inputs and
// reads its inputs (in place for a kernel's, where they can be), checking
// that each output fits its region when the model's shapes say its size,
// all before the model runs.
func (s *server) holdTensors(t *SharedTensors, req *decodedRequest, m ModelInfo) error {
	for role, ref := range req.OutputShm {
		if ref == nil {
			continue
		}
		if err := t.HoldOutput(s.opts.SharedMemory, role, req.OutputField[role], *ref); err != nil {
			return err
		}
	}
	batch := -1
	if sh := req.input().Tensor.Shape; len(sh) > 0 {
		batch = sh[0]
	} else if sh := req.Inputs[roleGradOutput].Tensor.Shape; m.Layer && len(sh) > 0 {
		batch = sh[0] // the backward of a kept forward
	}
	if err := t.CheckOutputSizes(m, batch); err != nil {
		return err
	}
	for i := range req.Inputs {
		w := &req.Inputs[i]
		if w.Shm == nil {
			continue
		}
		n := 1
		for _, d := range w.Tensor.Shape {
			n *= d
		}
		data, err := t.Input(s.opts.SharedMemory, w.Field, *w.Shm, w.Type, n, !m.Layer)
		if err != nil {
			return err
		}
		w.Tensor.Data = data
	}
	return nil
}
