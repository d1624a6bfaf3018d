/* mutex_pool.c - the textbook thread pool, as the baseline of workload 2:
 * a submit mallocs a node, appends it to a queue under the one mutex and
 * signals a condition variable; a worker takes a node under the mutex, runs
 * it unlocked, frees it, and signals the waiter when nothing is left to run.
 * No batching, no spinning, no per-thread queues. */
#include "config.h"

#include "mutex_pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct node {
    struct node *next;
    void (*fn)(void *arg);
    void *arg;
};

struct mutex_pool {
    pthread_mutex_t lock;   /* guards every field below */
    pthread_cond_t work;    /* signalled when a node is queued or on stop */
    pthread_cond_t idle;    /* signalled when unfinished drops to 0 */
    struct node *head, *tail;
    uint64_t unfinished;    /* queued or running */
    uint64_t ran;           /* since the last mutex_pool_wait_all */
    bool stop;
    unsigned nthreads;
    pthread_t threads[];
};

static void *worker(void *p)
{
    mutex_pool *pool = p;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->head && !pool->stop)
            pthread_cond_wait(&pool->work, &pool->lock);
        if (!pool->head)
            break;
        struct node *n = pool->head;
        pool->head = n->next;
        if (!pool->head)
            pool->tail = NULL;
        pthread_mutex_unlock(&pool->lock);
        n->fn(n->arg);
        free(n);
        pthread_mutex_lock(&pool->lock);
        pool->ran++;
        if (--pool->unfinished == 0)
            pthread_cond_broadcast(&pool->idle);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

mutex_pool *mutex_pool_new(unsigned threads)
{
    mutex_pool *pool = calloc(1, sizeof *pool + threads * sizeof(pthread_t));
    if (!pool)
        return NULL;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->work, NULL);
    pthread_cond_init(&pool->idle, NULL);
    for (; pool->nthreads < threads; pool->nthreads++) {
        if (pthread_create(&pool->threads[pool->nthreads], NULL, worker, pool) != 0) {
            mutex_pool_free(pool);
            return NULL;
        }
    }
    return pool;
}

int mutex_pool_submit(mutex_pool *pool, void (*fn)(void *arg), void *arg)
{
    struct node *n = malloc(sizeof *n);
    if (!n)
        return -1;
    n->next = NULL;
    n->fn = fn;
    n->arg = arg;
    pthread_mutex_lock(&pool->lock);
    if (pool->tail)
        pool->tail->next = n;
    else
        pool->head = n;
    pool->tail = n;
    pool->unfinished++;
    pthread_cond_signal(&pool->work);
    pthread_mutex_unlock(&pool->lock);
    return 0;
}

uint64_t mutex_pool_wait_all(mutex_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    while (pool->unfinished)
        pthread_cond_wait(&pool->idle, &pool->lock);
    uint64_t ran = pool->ran;
    pool->ran = 0;
    pthread_mutex_unlock(&pool->lock);
    return ran;
}

void mutex_pool_free(mutex_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    pool->stop = true;
    pthread_cond_broadcast(&pool->work);
    pthread_mutex_unlock(&pool->lock);
    for (unsigned i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->idle);
    pthread_cond_destroy(&pool->work);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}
