"""Resilin (thesis ch. 4): the Elastic MapReduce API over the federation's clouds. Job flows
are provisioned through each cloud's EC2 API, run on Apache Spark standalone (Hadoop
streaming semantics for streaming steps), read and write their data in the cloud's Cumulus,
grow and shrink while steps run, and may span clouds.

  emr        the API: requests checked at once, answers in botocore's shapes
  flow       job flows and the runner that carries them through EMR's states
  spark      the engine's daemons, started by one script per node
  step       one step on the master (spark-submit of a streaming, application or JAR step)
  streaming  Hadoop streaming on Spark (splits by Range requests, hash partition, sort)
  objects    the job flow's objects in Cumulus, from the nodes
  service    the endpoint (`python3 -m g5kdeploy.resilin.service`)"""
