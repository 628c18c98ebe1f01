package oip

import (
	"fmt"
	"net/http"

	"github.com/esper/kasmina-host/runtime/failure"
	"github.com/esper/kasmina-host/runtime/oip/wiretensor"
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

// heldTensors are the shared memory regions one inference reads its inputs
// from and writes its output to, held until it is answered.
type heldTensors struct {
	in     []*shm.Lease
	out    *shm.Lease
	outRef shm.Ref
}

func (h *heldTensors) release() {
	for _, l := range h.in {
		l.Release()
	}
	h.out.Release()
}

// holdTensors holds the regions req names, reads its inputs from shared
// memory, and checks that the output fits its region when the model
// declares its shape, all before the model runs.
func (s *server) holdTensors(req *decodedRequest, m ModelInfo) (heldTensors, error) {
	var h heldTensors
	var err error
	in := req.input()
	if ref := req.OutputShm; ref != nil {
		if h.out, err = s.opts.SharedMemory.Hold("outputs[0]", *ref); err != nil {
			return h, err
		}
		if !h.out.Writable() {
			return h, failure.Errorf(failure.Refused, "outputs[0].parameters.%s: region %q is read-only to the host", shm.ParamRegion, ref.Region)
		}
		h.outRef = *ref
		if m.OutputShape != nil && len(in.Tensor.Shape) > 0 {
			n := int64(in.Tensor.Shape[0])
			for _, d := range m.OutputShape {
				n *= int64(d)
			}
			if err := h.checkOutput(n); err != nil {
				return h, err
			}
		}
	}
	for i := range req.Inputs {
		w := &req.Inputs[i]
		if w.Shm == nil {
			continue
		}
		lease, err := s.opts.SharedMemory.Hold(w.Field, *w.Shm)
		if err != nil {
			return h, err
		}
		h.in = append(h.in, lease)
		n := int64(1)
		for _, d := range w.Tensor.Shape {
			n *= int64(d)
		}
		// Copied out of the region, not used where it lies: the kernel's
		// workers (other goroutines) would read it, and a fault there
		// (the client truncating the object) could not be recovered.
		w.buf = wiretensor.GetFP32(int(n))
		data := w.buf.Data
		err = lease.Read(w.Shm.Offset, w.Shm.ByteSize, func(b []byte) error {
			return wiretensor.Decode("shared memory", data, b, w.Type)
		})
		if err != nil {
			return h, fmt.Errorf("%s: %w", w.Field, err)
		}
		w.Tensor.Data = data
	}
	return h, nil
}

func (h *heldTensors) checkOutput(n int64) error {
	if need := 4 * n; uint64(need) > h.outRef.ByteSize {
		return badInput("outputs[0].parameters.%s is %d bytes but the output needs %d", shm.ParamByteSize, h.outRef.ByteSize, need)
	}
	return nil
}

// writeOutput puts the output into its region, if it has one.
func (h *heldTensors) writeOutput(out Tensor) error {
	if h.out == nil {
		return nil
	}
	if err := h.checkOutput(int64(len(out.Data))); err != nil {
		return err
	}
	err := h.out.Write(h.outRef.Offset, 4*uint64(len(out.Data)), func(b []byte) error {
		wiretensor.PutFP32(b, out.Data)
		return nil
	})
	if err != nil {
		return fmt.Errorf("outputs[0]: %w", err)
	}
	return nil
}
