"""What a worker shows about itself: metrics, status snapshots, client statistics."""
