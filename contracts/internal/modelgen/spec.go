package modelgen

// Models is the spec of every wire model of package contracts, in the
// order the generated file holds them. Field order is the reference's
// (the Pydantic models'), which AppendJSON writes and the decoder
// expects first.
var Models = []Model{
	{
		Name: "Seed", Recv: "s", Prefix: "sd",
		Doc:         "Seed is a morphogenetic seed embedded in a neural network layer.",
		ValidateDoc: "Validate checks every constraint of the contract.",
		Fields: []Field{
			{Go: "SeedID", JSON: "seed_id", Kind: Str, Default: "newUUID()"},
			{Go: "LayerID", JSON: "layer_id", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "Position", JSON: "position", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "State", JSON: "state", Kind: Enum, Type: "SeedState", Names: "seedStateNames", Default: "SeedDormant"},
			{Go: "BlueprintID", JSON: "blueprint_id", Kind: OptStr},
			{Go: "CreatedAt", JSON: "created_at", Kind: Time, Default: Now},
			{Go: "UpdatedAt", JSON: "updated_at", Kind: Time, Default: Now},
			{Go: "Metadata", JSON: "metadata", Kind: AnyMap, Default: "map[string]any{}"},
		},
	},
	{
		Name: "Blueprint", Recv: "b", Prefix: "bp", Strip: true,
		Doc: "Blueprint is an architectural blueprint for a network component. Its\n" +
			"strings (and its dictionaries' keys) are stripped of surrounding white\n" +
			"space on decode.",
		ValidateDoc: "Validate checks every constraint; lengths apply to the stripped strings.",
		Fields: []Field{
			{Go: "BlueprintID", JSON: "blueprint_id", Kind: Str, Default: "newUUID()"},
			{Go: "Name", JSON: "name", Kind: Str, Required: true, Checks: []Check{Len(1, 255)}},
			{Go: "Description", JSON: "description", Kind: Str, Required: true, Checks: []Check{Len(1, 1000)}},
			{Go: "State", JSON: "state", Kind: Enum, Type: "BlueprintState", Names: "blueprintStateNames", Default: "BlueprintProposed"},
			{Go: "Architecture", JSON: "architecture", Kind: AnyMap, Required: true},
			{Go: "Hyperparameters", JSON: "hyperparameters", Kind: AnyMap, Default: "map[string]any{}"},
			{Go: "PerformanceMetrics", JSON: "performance_metrics", Kind: Metrics, Default: "Metrics{}"},
			{Go: "CreatedAt", JSON: "created_at", Kind: Time, Default: Now},
			{Go: "UpdatedAt", JSON: "updated_at", Kind: Time, Default: Now},
			{Go: "CreatedBy", JSON: "created_by", Kind: Str, Required: true, Checks: []Check{Len(1, 100)}},
		},
	},
	{
		Name: "KernelMetadata", Recv: "k", Prefix: "km",
		Doc: "KernelMetadata describes a compiled kernel artifact. Its strings are\n" +
			"kept exactly as given (the reference does not strip them).",
		ValidateDoc: "Validate checks every constraint of the contract.",
		Fields: []Field{
			{Go: "KernelID", JSON: "kernel_id", Kind: Str, Required: true},
			{Go: "BlueprintID", JSON: "blueprint_id", Kind: Str, Required: true},
			{Go: "Name", JSON: "name", Kind: Str, Required: true, Checks: []Check{Len(1, 255)}},
			{Go: "InputShape", JSON: "input_shape", Kind: IntList, Required: true},
			{Go: "OutputShape", JSON: "output_shape", Kind: IntList, Required: true},
			{Go: "ParameterCount", JSON: "parameter_count", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "DeviceRequirements", JSON: "device_requirements", Kind: StrList, Default: "[]string{}"},
			{Go: "MemoryFootprintMB", JSON: "memory_footprint_mb", Kind: Float, Required: true, Checks: []Check{Ge(0)}},
			{Go: "CompilationTarget", JSON: "compilation_target", Kind: Str, Default: "CompilationTorchScript"},
			{Go: "OptimizationFlags", JSON: "optimization_flags", Kind: Object},
			{Go: "PerformanceProfile", JSON: "performance_profile", Kind: Metrics, Default: "Metrics{}"},
			{Go: "CompatibilityVersion", JSON: "compatibility_version", Kind: Str, Default: `"1.0"`},
			{Go: "CreatedAt", JSON: "created_at", Kind: Time, Default: Now},
			{Go: "Checksum", JSON: "checksum", Kind: OptStr, Comment: "SHA-256 of the kernel binary"},
		},
	},
	{
		Name: "CompiledKernel", Recv: "c", Prefix: "ck",
		Doc:         "CompiledKernel is a compiled kernel artifact ready for execution.",
		ValidateDoc: "Validate checks every constraint, the metadata's included.",
		Fields: []Field{
			{Go: "KernelID", JSON: "kernel_id", Kind: Str, Default: "newUUID()"},
			{Go: "BlueprintID", JSON: "blueprint_id", Kind: Str, Required: true},
			{Go: "BinaryRef", JSON: "binary_ref", Kind: Str, Required: true, Comment: "S3 reference to the binary"},
			{Go: "Metadata", JSON: "metadata", Kind: Nested, Type: "KernelMetadata", Required: true},
			{Go: "Status", JSON: "status", Kind: Str, Default: "KernelCompiled",
				Checks: []Check{OneOf("KernelCompiled", "KernelValidated", "KernelDeployed", "KernelDeprecated")}},
			{Go: "ValidationResults", JSON: "validation_results", Kind: Object},
			{Go: "DeploymentStats", JSON: "deployment_stats", Kind: Metrics, Default: "Metrics{}"},
			{Go: "CreatedAt", JSON: "created_at", Kind: Time, Default: Now},
			{Go: "LastUsedAt", JSON: "last_used_at", Kind: OptTime},
		},
	},
	{
		Name: "TrainingSession", Recv: "t", Prefix: "ts", Strip: true,
		Doc: "TrainingSession is a training session of a morphogenetic system. Its\n" +
			"strings (and its dictionaries' keys) are stripped on decode.",
		ValidateDoc: "Validate checks every constraint, the nested seeds' and blueprints'\nincluded.",
		Fields: []Field{
			{Go: "SessionID", JSON: "session_id", Kind: Str, Default: "newUUID()"},
			{Go: "Name", JSON: "name", Kind: Str, Required: true, Checks: []Check{Len(1, 255)}},
			{Go: "Description", JSON: "description", Kind: Str, Required: true, Checks: []Check{Len(1, 1000)}},
			{Go: "TrainingModelConfig", JSON: "training_model_config", Kind: AnyMap, Required: true},
			{Go: "TrainingConfig", JSON: "training_config", Kind: AnyMap, Required: true},
			{Go: "Seeds", JSON: "seeds", Kind: NestedList, Type: "Seed", Default: "[]Seed{}"},
			{Go: "Blueprints", JSON: "blueprints", Kind: NestedList, Type: "Blueprint", Default: "[]Blueprint{}"},
			{Go: "Status", JSON: "status", Kind: Str, Default: "SessionInitialized",
				Checks: []Check{OneOf("SessionInitialized", "SessionRunning", "SessionPaused", "SessionCompleted", "SessionFailed")}},
			{Go: "CreatedAt", JSON: "created_at", Kind: Time, Default: Now},
			{Go: "UpdatedAt", JSON: "updated_at", Kind: Time, Default: Now},
		},
	},
	{
		Name: "HealthSignal", Recv: "h", Prefix: "hs",
		Doc: "HealthSignal is the high-frequency health telemetry a seed publishes on\n" +
			"TopicTelemetrySeedHealth.",
		ValidateDoc: "Validate checks every bound of the contract.",
		Fields: []Field{
			{Go: "LayerID", JSON: "layer_id", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "SeedID", JSON: "seed_id", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "ChunkID", JSON: "chunk_id", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "Epoch", JSON: "epoch", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "ActivationVariance", JSON: "activation_variance", Kind: Float, Required: true, Checks: []Check{Ge(0)}},
			{Go: "DeadNeuronRatio", JSON: "dead_neuron_ratio", Kind: Float, Required: true, Checks: []Check{Range(0, 1)}},
			{Go: "AvgCorrelation", JSON: "avg_correlation", Kind: Float, Required: true, Checks: []Check{Range(-1, 1)}},
			{Go: "IsReadyForTransition", JSON: "is_ready_for_transition", Kind: Bool},
			{Go: "HealthScore", JSON: "health_score", Kind: Float, Default: "1", Checks: []Check{Range(0, 1)}},
			{Go: "ExecutionLatency", JSON: "execution_latency", Kind: Float, Checks: []Check{Ge(0)}},
			{Go: "ErrorCount", JSON: "error_count", Kind: Int, Checks: []Check{Ge(0)}},
			{Go: "ActiveSeeds", JSON: "active_seeds", Kind: Int, Default: "1", Checks: []Check{Ge(0)}},
			{Go: "TotalSeeds", JSON: "total_seeds", Kind: Int, Default: "1", Checks: []Check{Ge(1)}},
			{Go: "Timestamp", JSON: "timestamp", Kind: Float, Default: "UnixNow()", Checks: []Check{Finite()}, Comment: "unix seconds"},
		},
	},
	{
		Name: "SystemStatePacket", Recv: "s", Prefix: "ssp",
		Doc: "SystemStatePacket is the system-wide state given to the strategic\n" +
			"controller.",
		ValidateDoc: "Validate checks every bound of the contract.",
		Fields: []Field{
			{Go: "Epoch", JSON: "epoch", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "TotalSeeds", JSON: "total_seeds", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "ActiveSeeds", JSON: "active_seeds", Kind: Int, Required: true, Checks: []Check{Ge(0)}},
			{Go: "TrainingLoss", JSON: "training_loss", Kind: Float, Required: true, Checks: []Check{Ge(0)}},
			{Go: "ValidationLoss", JSON: "validation_loss", Kind: Float, Required: true, Checks: []Check{Ge(0)}},
			{Go: "SystemLoad", JSON: "system_load", Kind: Float, Required: true, Checks: []Check{Range(0, 1)}},
			{Go: "MemoryUsage", JSON: "memory_usage", Kind: Float, Required: true, Checks: []Check{Range(0, 1)}},
		},
	},
	{
		Name: "AdaptationDecision", Recv: "a", Prefix: "ad", Strip: true,
		Doc: "AdaptationDecision is a strategic adaptation decision from Tamiyo. Its\n" +
			"strings are stripped of surrounding white space on decode.",
		ValidateDoc: "Validate checks every constraint; string lengths and the pattern apply\n" +
			"to the stripped strings, as in the reference.",
		Fields: []Field{
			{Go: "LayerName", JSON: "layer_name", Kind: Str, Required: true, Checks: []Check{Len(1, 255)}},
			{Go: "AdaptationType", JSON: "adaptation_type", Kind: Str, Required: true, Checks: []Check{Len(1, 100),
				OneOfUnlessEmpty("AdaptationAddSeed", "AdaptationRemoveSeed", "AdaptationModifyArchitecture", "AdaptationOptimizeParameters")}},
			{Go: "Confidence", JSON: "confidence", Kind: Float, Required: true, Checks: []Check{Range(0, 1)}},
			{Go: "Urgency", JSON: "urgency", Kind: Float, Required: true, Checks: []Check{Range(0, 1)}},
			{Go: "Metadata", JSON: "metadata", Kind: AnyMap, Default: "map[string]any{}"},
			{Go: "Timestamp", JSON: "timestamp", Kind: Float, Default: "UnixNow()", Checks: []Check{Finite()}, Comment: "unix seconds"},
		},
	},
	{
		Name: "OonaMessage", Recv: "o", Prefix: "om", IgnoreUnknown: true,
		Doc: "OonaMessage is the envelope of every message on the Oona bus. Unknown\n" +
			"fields are ignored on decode, as the reference does.",
		ValidateDoc: "Validate checks the topic, the payload and the timestamp.",
		Fields: []Field{
			{Go: "EventID", JSON: "event_id", Kind: Str, Default: "newUUID()"},
			{Go: "SenderID", JSON: "sender_id", Kind: Str, Required: true},
			{Go: "Timestamp", JSON: "timestamp", Kind: Time, Default: Now},
			{Go: "TraceID", JSON: "trace_id", Kind: Str, Required: true},
			{Go: "Topic", JSON: "topic", Kind: Enum, Type: "TopicName", Names: "topicNames", Required: true},
			{Go: "Payload", JSON: "payload", Kind: AnyMap, Required: true},
		},
	},
	{
		Name: "BlueprintSubmitted", Recv: "b", Prefix: "bs", IgnoreUnknown: true,
		Doc: "BlueprintSubmitted is the payload of a blueprint submission event.\n" +
			"Unknown fields are ignored on decode, as the reference does.",
		ValidateDoc: "Validate has nothing to check beyond the types: both fields are free\n" +
			"strings. It exists so every contract answers Validate.",
		Fields: []Field{
			{Go: "BlueprintID", JSON: "blueprint_id", Kind: Str, Required: true},
			{Go: "SubmittedBy", JSON: "submitted_by", Kind: Str, Required: true},
		},
	},
}
