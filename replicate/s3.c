/* s3.c - placeholder until the S3 backend lands in this file. */
#include <errno.h>

#include "replicate_i.h"

int s3_backend_open(const char *url, struct backend **out, struct backend_err *err)
{
	backend_err_set(err, false, 0, NULL, "s3:// replicas are not available in this build");
	return -ENOTSUP;
}
