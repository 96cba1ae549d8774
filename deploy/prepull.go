package deploy

import (
	"context"

	"github.com/moby/moby/api/types/swarm"
)

// prepull makes every eligible node pull image before the rolling update.
func (c *Client) prepull(ctx context.Context, service, image string, placement *swarm.Placement, auth string) error {
	return errNoPrepull
}
