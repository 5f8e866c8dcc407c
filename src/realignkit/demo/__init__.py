"""The miniature world: a chat world trained from scratch in which safety is lost and restored."""
