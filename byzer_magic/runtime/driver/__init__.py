"""What runs in the Ray Job's driver on the cluster: tokenise the input once, lay out the run, start the workers."""
