package contracts

func (h HealthSignal) AppendJSONNew() []byte       { return h.AppendJSON(nil) }
func (c CompiledKernel) AppendJSONNew() []byte     { return c.AppendJSON(nil) }
func (k KernelMetadata) AppendJSONNew() []byte     { return k.AppendJSON(nil) }
func (s Seed) AppendJSONNew() []byte               { return s.AppendJSON(nil) }
func (b Blueprint) AppendJSONNew() []byte          { return b.AppendJSON(nil) }
func (t TrainingSession) AppendJSONNew() []byte    { return t.AppendJSON(nil) }
func (s SystemStatePacket) AppendJSONNew() []byte  { return s.AppendJSON(nil) }
func (a AdaptationDecision) AppendJSONNew() []byte { return a.AppendJSON(nil) }
func (o OonaMessage) AppendJSONNew() []byte        { return o.AppendJSON(nil) }
func (b BlueprintSubmitted) AppendJSONNew() []byte { return b.AppendJSON(nil) }
func (s SeedID) AppendJSONNew() []byte             { return s.AppendJSON(nil) }
