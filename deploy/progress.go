package deploy

import "time"

// Stage says what a Progress event is about.
type Stage string

// The stages of a deploy, in the order they usually come.
const (
	// StageImage: the image is pinned (Image).
	StageImage Stage = "image"
	// StagePush: an image missing from the registry is pushed (Image;
	// Message says where from).
	StagePush Stage = "push"
	// StageCreated: a network, secret or config was created (Message).
	StageCreated Stage = "created"
	// StageRemoved: a service, network, secret or config was removed
	// (Message).
	StageRemoved Stage = "removed"
	// StageWarning: the engine warned (Message).
	StageWarning Stage = "warning"
	// StagePrepull: a prepull started (Image), or one node finished it
	// (Node, Took, Err), or a node is not waited for (Node, Message).
	StagePrepull Stage = "prepull"
	// StageRollback: a requested rollback started (Image: the previous
	// spec's image), or swarm started rolling a failed update back
	// (Message: swarm's update message).
	StageRollback Stage = "rollback"
	// StageTask: one slot (replicated: Slot, and Node once placed) or one
	// node (global: Node) changed: its task's State, Image and Err.
	StageTask Stage = "task"
	// StageStuck: a slot or node keeps the rollout from converging: its
	// node is down, or swarm cannot place its task (Message, Node, Slot).
	StageStuck Stage = "stuck"
	// StageOverall: Running of Total tasks run the wanted image (Rollback
	// while swarm rolls back).
	StageOverall Stage = "overall"
	// StageVerify: every task runs the image; waiting Took (the update
	// monitor) to see that they stay up.
	StageVerify Stage = "verify"
	// StageConverged: Running of Total tasks run Image; the rollout is done.
	StageConverged Stage = "converged"
	// StageError: the rollout failed (Message: the error).
	StageError Stage = "error"
)

// Progress is one event of a deploy, rollback or prepull, reported through
// Options.OnProgress. Which fields are set depends on Stage; the text
// rendering is the caller's (labreg's CLI prints one line per event).
type Progress struct {
	// Service is the service the event is about.
	Service string
	Stage   Stage
	// Slot is swarm's slot number of a replicated task (0 for global).
	Slot int
	// Node is the hostname of the task's node ("" while unplaced).
	Node string
	// State is the task's state ("running", "pending", ...).
	State string
	// Image is the task's (or the deploy's) image.
	Image string
	// Err is the task's or node's error.
	Err string
	// Running and Total count tasks that run the wanted image.
	Running, Total int
	// Rollback is set while swarm rolls an update back, and on a requested
	// rollback.
	Rollback bool
	// Took is a node's pull time (prepull) or the verify period.
	Took time.Duration
	// Message is a human-readable sentence.
	Message string
}
