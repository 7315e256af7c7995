"""Model code of each family: architectures, checkpoint readers, pre/post-processing (the job-facing families that use
them are in ``edgekit.families``)."""
