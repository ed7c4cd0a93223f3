"""The embedded default data set (synthetic, in the real nuScenes format) and data checks."""
