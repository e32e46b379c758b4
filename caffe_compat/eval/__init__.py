"""Face verification: pairs files, feature extraction with the mirror trick, k-fold metrics."""
