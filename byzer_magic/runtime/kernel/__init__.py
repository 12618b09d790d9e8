"""What runs in the notebook's kernel: submit a job, the job API (JobHandle), resume, the pre-flight plan."""
